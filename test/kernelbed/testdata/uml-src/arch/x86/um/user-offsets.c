/* Fixture: the lines of Linux 6.1's arch/x86/um/user-offsets.c that
 * hack/kernel/build.sh patches (the rest of the file is left out). */
#ifdef FP_XSTATE_MAGIC1
	DEFINE_LONGS(HOST_FP_SIZE, 2696);
#else
	DEFINE(HOST_FP_SIZE, sizeof(struct _fpstate) / sizeof(unsigned long));
#endif
