/*
 * xsave-size: prints the size in bytes of this host's XSAVE area as the
 * host kernel's ptrace sees it (the NT_X86_XSTATE regset), which is the
 * exact size a User-Mode Linux kernel must use for PTRACE_SETREGSET: the
 * host's xstateregs_set() returns EFAULT for any other size.
 *
 * It asks the kernel rather than CPUID because the kernel may enable fewer
 * features than the CPU has (CPUID 0xD.0 EBX follows XCR0, ECX does not),
 * and because the answer also proves that ptrace works here, which UML
 * needs. A traced child stops itself; PTRACE_GETREGSET with a buffer far
 * larger than any XSAVE area shrinks iov_len to the regset's real size.
 *
 * Exit codes: 0 printed the size; 2 ptrace is not permitted here;
 * 3 the host has no XSAVE (UML falls back to FXSAVE: not supported by the
 * bed). Errors are one line on stderr.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static char buf[64 * 1024];

int main(void)
{
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "xsave-size: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
			_exit(2);
		raise(SIGSTOP);
		_exit(0);
	}
	int status;
	if (waitpid(pid, &status, 0) < 0 || !WIFSTOPPED(status)) {
		fprintf(stderr, "xsave-size: ptrace is not permitted here (PTRACE_TRACEME refused: seccomp, "
				"a container without CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=3)\n");
		return 2;
	}
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	long r = ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
	int err = errno;
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	if (r < 0) {
		if (err == EPERM || err == EACCES) {
			fprintf(stderr, "xsave-size: ptrace is not permitted here: %s\n", strerror(err));
			return 2;
		}
		fprintf(stderr, "xsave-size: PTRACE_GETREGSET NT_X86_XSTATE failed (%s): this host has no XSAVE\n",
			strerror(err));
		return 3;
	}
	printf("%zu\n", iov.iov_len);
	return 0;
}
