// init.c: PID 1 of the kernel test bed.
//
// Sets up the guest (proc, sysfs, devtmpfs, tmpfs, debugfs, bpffs, lo up,
// the host's / read-only on /host, the per-boot control directory named by
// the kernel argument bed_ctl= read-write on /ctl), runs `sh /ctl/cmd` with
// its output on the second console (/dev/tty1, the host's stdout), writes its
// exit code to /ctl/rc and powers off.
//
// It is C, not a shell script, for speed: under User-Mode Linux every
// fork+exec costs 0.1-0.3 s, and a script doing the same work spends about
// 3.5 s of a 4.5 s boot in mount, mkdir, ip and sed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void warn(const char *what) { fprintf(stderr, "bed-init: %s: %s\n", what, strerror(errno)); }

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
	mkdir(dst, 0755); // exists already on the read-only root; needed on tmpfs
	if (mount(src, dst, type, flags, data) != 0 && errno != EBUSY) {
		char what[256];
		snprintf(what, sizeof what, "mount %s on %s", type, dst);
		warn(what);
	}
}

static void loopback_up(void) {
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
		warn("lo flags");
	} else {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) warn("lo up");
	}
	if (s >= 0) close(s);
}

// ctl_dir returns the value of bed_ctl= on the kernel command line.
static const char *ctl_dir(void) {
	static char cmdline[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, cmdline, sizeof cmdline - 1);
	if (fd >= 0) close(fd);
	if (n <= 0) return NULL;
	cmdline[n] = 0;
	char *p = strstr(cmdline, "bed_ctl=");
	if (!p) return NULL;
	p += strlen("bed_ctl=");
	p[strcspn(p, " \n")] = 0;
	return p;
}

int main(void) {
	mnt("proc", "/proc", "proc", 0, NULL);
	mnt("sysfs", "/sys", "sysfs", 0, NULL);
	mnt("dev", "/dev", "devtmpfs", 0, NULL);
	mnt("devpts", "/dev/pts", "devpts", 0, NULL);
	mnt("shm", "/dev/shm", "tmpfs", 0, NULL);
	mnt("tmp", "/tmp", "tmpfs", 0, NULL);
	mnt("run", "/run", "tmpfs", 0, NULL);
	mkdir("/run/netns", 0755);
	mnt("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	mnt("bpf", "/sys/fs/bpf", "bpf", 0, NULL);
	symlink("/proc/self/fd", "/dev/fd");
	loopback_up();
	mnt("none", "/host", "hostfs", MS_RDONLY, NULL);
	const char *ctl = ctl_dir();
	if (!ctl) {
		fprintf(stderr, "bed-init: no bed_ctl= on the kernel command line\n");
	} else {
		mnt("none", "/ctl", "hostfs", 0, ctl);
	}

	// The second console carries the command's output to the host's stdout,
	// byte for byte (raw: no \n -> \r\n, no echo).
	int out = open("/dev/tty1", O_RDWR | O_NOCTTY | O_CLOEXEC);
	struct termios tio;
	if (out < 0) {
		warn("open /dev/tty1");
	} else if (tcgetattr(out, &tio) == 0) {
		cfmakeraw(&tio);
		tcsetattr(out, TCSANOW, &tio);
	}

	int rc = 125;
	pid_t child = fork();
	if (child == 0) {
		setsid();
		int in = open("/dev/null", O_RDONLY);
		dup2(in, 0);
		if (out >= 0) {
			dup2(out, 1);
			dup2(out, 2);
		}
		setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
		setenv("HOME", "/root", 1);
		setenv("TMPDIR", "/tmp", 1);
		setenv("KERNEL_TEST_BED", "1", 1);
		chdir("/");
		execl("/bin/sh", "sh", "/ctl/cmd", (char *)NULL);
		warn("exec /bin/sh");
		_exit(127);
	} else if (child < 0) {
		warn("fork");
	} else {
		// As PID 1 we also reap every orphan until our child is done.
		for (;;) {
			int st;
			pid_t pid = waitpid(-1, &st, 0);
			if (pid < 0 && errno == EINTR) continue;
			if (pid < 0) {
				warn("waitpid");
				break;
			}
			if (pid == child) {
				rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
				break;
			}
		}
	}

	if (ctl) {
		int fd = open("/ctl/rc", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			warn("open /ctl/rc");
		} else {
			dprintf(fd, "%d\n", rc);
			fsync(fd);
			close(fd);
		}
	}
	sync();
	reboot(RB_POWER_OFF);
	warn("power off");
	return 1;
}
