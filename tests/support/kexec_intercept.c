/*
 * kexec_intercept.c - LD_PRELOAD shim that turns kexec-tools into a
 * differential-test oracle for pykexec.
 *
 * Run `/usr/sbin/kexec ...` with this object preloaded and it will:
 *
 *   - record every kexec_load(2) call (entry, flags, each segment's
 *     mem/memsz/bufsz and buffer bytes) into $PYKEXEC_ORACLE_OUT, then fail
 *     the call with EPERM, so nothing is ever loaded;
 *   - fail kexec_file_load(2) with ENOSYS and reboot(2) with EPERM;
 *   - serve a fixed list of "managed" paths (/proc/iomem, /sys/firmware, ...)
 *     exclusively from a synthetic tree at $PYKEXEC_ORACLE_ROOT: a managed
 *     path that is missing from the tree is reported as ENOENT ("hidden");
 *   - make getrandom() deterministic (splitmix64 stream seeded by
 *     $PYKEXEC_ORACLE_SEED) and record the bytes it handed out;
 *   - as a second line of defence, install a seccomp filter that makes the
 *     real kexec_load/kexec_file_load/reboot syscalls fail with EPERM even if
 *     some code path bypassed the libc symbols interposed here.
 *
 * Environment:
 *   PYKEXEC_ORACLE_OUT      output directory (must exist); optional
 *   PYKEXEC_ORACLE_ROOT     synthetic tree; if unset every managed path is hidden
 *   PYKEXEC_ORACLE_MANAGED  ':'-separated absolute path prefixes that replace
 *                           the built-in managed list
 *   PYKEXEC_ORACLE_SEED     unsigned integer seed for getrandom (default 0)
 *   PYKEXEC_ORACLE_NCPUS    value returned by sysconf(_SC_NPROCESSORS_*)
 *   PYKEXEC_ORACLE_ALLOW_NO_SECCOMP=1  run even if the seccomp filter cannot
 *                           be installed (otherwise the process aborts)
 *
 * Output (in $PYKEXEC_ORACLE_OUT):
 *   kexec_load-N.json         manifest of the N-th kexec_load call
 *   kexec_load-N-segMM.bin    buffer bytes of segment MM (bufsz bytes)
 *   getrandom.json            every getrandom() answer, rewritten on each call
 *   events.log                one line per intercepted action
 *
 * Only glibc symbols are interposed, so calls glibc makes internally (e.g. the
 * malloc tcache key read by getrandom) are not seen; they do not influence
 * what kexec-tools loads.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <mntent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <net/if.h>

/* Layout of struct kexec_segment from <linux/kexec.h> (not always installed). */
struct oracle_kexec_segment {
	const void *buf;
	size_t bufsz;
	const void *mem;
	size_t memsz;
};

#define MAX_MANAGED 64
#define MAX_RANDOM_RECORDS 64
#define MAX_RANDOM_BYTES 4096

static const char *const default_managed[] = {
	"/proc/iomem",
	"/proc/cmdline",
	"/proc/kcore",
	"/proc/kallsyms",
	"/proc/ksyms",
	"/proc/mounts",
	"/proc/self/mounts",
	"/proc/xen",
	"/proc/device-tree",
	"/sys/firmware",
	"/sys/hypervisor",
	"/sys/kernel/boot_params",
	"/sys/kernel/debug",
	"/sys/kernel/vmcoreinfo",
	"/sys/kernel/kexec_loaded",
	"/sys/kernel/kexec_crash_loaded",
	"/sys/kernel/kexec_crash_size",
	"/sys/kernel/crash_elfcorehdr_size",
	"/sys/devices/system/cpu",
	"/sys/devices/system/memory",
	"/dev/fb0",
	"/dev/xen",
	"/dev/mem",
	NULL,
};

static char managed_buf[8192];
static const char *managed[MAX_MANAGED + 1];
static const char *oracle_root;
static const char *oracle_out;
static uint64_t rng_state;
static long ncpus_override = -1;
static int load_counter;

/* getrandom() answers, kept so the manifest can say which bytes were random. */
static struct {
	size_t len;
	unsigned int flags;
	unsigned char bytes[256];
} random_records[MAX_RANDOM_RECORDS];
static int random_count;

/* --- real libc entry points ------------------------------------------- */

#define REAL(name) real_##name
#define DECLARE_REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__)

DECLARE_REAL(int, open, const char *, int, ...);
DECLARE_REAL(int, open64, const char *, int, ...);
DECLARE_REAL(int, openat, int, const char *, int, ...);
DECLARE_REAL(int, openat64, int, const char *, int, ...);
DECLARE_REAL(int, __open_2, const char *, int);
DECLARE_REAL(int, __open64_2, const char *, int);
DECLARE_REAL(int, __openat_2, int, const char *, int);
DECLARE_REAL(int, __openat64_2, int, const char *, int);
DECLARE_REAL(FILE *, fopen, const char *, const char *);
DECLARE_REAL(FILE *, fopen64, const char *, const char *);
DECLARE_REAL(DIR *, opendir, const char *);
DECLARE_REAL(int, stat, const char *, struct stat *);
DECLARE_REAL(int, stat64, const char *, struct stat64 *);
DECLARE_REAL(int, lstat, const char *, struct stat *);
DECLARE_REAL(int, lstat64, const char *, struct stat64 *);
DECLARE_REAL(int, fstatat, int, const char *, struct stat *, int);
DECLARE_REAL(int, fstatat64, int, const char *, struct stat64 *, int);
DECLARE_REAL(int, __xstat, int, const char *, struct stat *);
DECLARE_REAL(int, __xstat64, int, const char *, struct stat64 *);
DECLARE_REAL(int, __lxstat, int, const char *, struct stat *);
DECLARE_REAL(int, __lxstat64, int, const char *, struct stat64 *);
DECLARE_REAL(int, statx, int, const char *, int, unsigned int, struct statx *);
DECLARE_REAL(int, access, const char *, int);
DECLARE_REAL(int, faccessat, int, const char *, int, int);
DECLARE_REAL(ssize_t, readlink, const char *, char *, size_t);
DECLARE_REAL(FILE *, setmntent, const char *, const char *);
DECLARE_REAL(long, syscall, long, ...);
DECLARE_REAL(long, sysconf, int);

static void *lookup(const char *name)
{
	/* RTLD_NEXT: the definition this shim hides (normally glibc's). The
	 * pre-2.33 stat entry points only exist as versioned compat symbols,
	 * which plain dlsym does not return. */
	void *sym = dlsym(RTLD_NEXT, name);

	if (!sym)
		sym = dlvsym(RTLD_NEXT, name, "GLIBC_2.2.5");
	return sym;
}

/* --- logging ------------------------------------------------------------ */

/* Append one line to events.log with raw syscalls, so that logging never
 * re-enters the interposed functions. */
static void event(const char *fmt, ...)
{
	char path[4096];
	char line[4608];
	va_list ap;
	int fd, n;

	if (!oracle_out)
		return;
	snprintf(path, sizeof(path), "%s/events.log", oracle_out);
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	fd = (int)REAL(syscall)(SYS_openat, AT_FDCWD, path,
				O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, line, n) < 0) {
		/* Nothing useful to do: the log is diagnostic only. */
	}
	close(fd);
}

/* --- seccomp safety net ------------------------------------------------- */

static int install_seccomp(void)
{
	/* Deny kexec_load, kexec_file_load and reboot in the kernel itself. The
	 * interposers below should make these unreachable; this filter makes sure
	 * that a missed code path still cannot load or reboot anything. */
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_kexec_load, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_kexec_file_load, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_reboot, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	};
	struct sock_fprog prog = {
		.len = sizeof(filter) / sizeof(filter[0]),
		.filter = filter,
	};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

/* --- initialisation ----------------------------------------------------- */

static void parse_managed(void)
{
	const char *env = getenv("PYKEXEC_ORACLE_MANAGED");
	int n = 0;

	if (!env) {
		for (n = 0; default_managed[n] && n < MAX_MANAGED; n++)
			managed[n] = default_managed[n];
		managed[n] = NULL;
		return;
	}
	snprintf(managed_buf, sizeof(managed_buf), "%s", env);
	for (char *tok = strtok(managed_buf, ":"); tok && n < MAX_MANAGED;
	     tok = strtok(NULL, ":")) {
		if (tok[0] == '/')
			managed[n++] = tok;
	}
	managed[n] = NULL;
}

static void oracle_init(void)
{
	static int done;
	const char *env;

	/* Other libraries' constructors may call into us before our own
	 * constructor has run, so every entry point initialises lazily. */
	if (done)
		return;
	done = 1;

	real_open = lookup("open");
	real_open64 = lookup("open64");
	real_openat = lookup("openat");
	real_openat64 = lookup("openat64");
	real___open_2 = lookup("__open_2");
	real___open64_2 = lookup("__open64_2");
	real___openat_2 = lookup("__openat_2");
	real___openat64_2 = lookup("__openat64_2");
	real_fopen = lookup("fopen");
	real_fopen64 = lookup("fopen64");
	real_opendir = lookup("opendir");
	real_stat = lookup("stat");
	real_stat64 = lookup("stat64");
	real_lstat = lookup("lstat");
	real_lstat64 = lookup("lstat64");
	real_fstatat = lookup("fstatat");
	real_fstatat64 = lookup("fstatat64");
	real___xstat = lookup("__xstat");
	real___xstat64 = lookup("__xstat64");
	real___lxstat = lookup("__lxstat");
	real___lxstat64 = lookup("__lxstat64");
	real_statx = lookup("statx");
	real_access = lookup("access");
	real_faccessat = lookup("faccessat");
	real_readlink = lookup("readlink");
	real_setmntent = lookup("setmntent");
	real_syscall = lookup("syscall");
	real_sysconf = lookup("sysconf");

	oracle_root = getenv("PYKEXEC_ORACLE_ROOT");
	oracle_out = getenv("PYKEXEC_ORACLE_OUT");
	env = getenv("PYKEXEC_ORACLE_SEED");
	rng_state = env ? strtoull(env, NULL, 0) : 0;
	env = getenv("PYKEXEC_ORACLE_NCPUS");
	if (env)
		ncpus_override = strtol(env, NULL, 0);
	parse_managed();

	if (install_seccomp() != 0) {
		env = getenv("PYKEXEC_ORACLE_ALLOW_NO_SECCOMP");
		fprintf(stderr, "kexec_intercept: cannot install seccomp filter: %s\n",
			strerror(errno));
		if (!env || strcmp(env, "1") != 0)
			abort();
	}
	event("init root=%s seed=0x%llx", oracle_root ? oracle_root : "(none)",
	      (unsigned long long)rng_state);
}

__attribute__((constructor)) static void oracle_constructor(void)
{
	oracle_init();
}

/* --- path redirection --------------------------------------------------- */

/* Does `path` equal a managed prefix or lie below one? */
static int is_managed(const char *path)
{
	if (!path || path[0] != '/')
		return 0;
	for (int i = 0; managed[i]; i++) {
		size_t len = strlen(managed[i]);

		if (strncmp(path, managed[i], len) == 0 &&
		    (path[len] == '\0' || path[len] == '/'))
			return 1;
	}
	return 0;
}

enum redirect { PASS, REDIRECT, HIDE };

/* Fail with ENOSYS if this libc lacks the symbol we are standing in for. */
#define NEED_REAL(name, fail)                                                \
	do {                                                                 \
		if (!real_##name) {                                          \
			errno = ENOSYS;                                      \
			return fail;                                         \
		}                                                            \
	} while (0)

/*
 * Decide what to do with `path`. On REDIRECT, `out` receives the path inside
 * the synthetic tree. Hidden paths make the caller fail with ENOENT.
 * The existence test uses the raw syscall so it cannot recurse into us.
 */
static enum redirect resolve(const char *what, const char *path, char *out, size_t outsz)
{
	struct stat st;

	if (!is_managed(path))
		return PASS;
	if (oracle_root) {
		int n = snprintf(out, outsz, "%s%s", oracle_root, path);

		if (n > 0 && (size_t)n < outsz &&
		    REAL(syscall)(SYS_newfstatat, AT_FDCWD, out, &st, 0) == 0) {
			event("%s redirect %s", what, path);
			return REDIRECT;
		}
	}
	event("%s hide %s", what, path);
	return HIDE;
}

/* Common prologue: map `path`, or return `fail` with ENOENT if hidden. */
#define MAP_PATH(what, path, fail)                                           \
	char mapped_[4096];                                                  \
	oracle_init();                                                       \
	switch (resolve(what, path, mapped_, sizeof(mapped_))) {             \
	case HIDE:                                                           \
		errno = ENOENT;                                              \
		return fail;                                                 \
	case REDIRECT:                                                       \
		path = mapped_;                                              \
		break;                                                       \
	case PASS:                                                           \
		break;                                                       \
	}

static mode_t open_mode(int flags, va_list ap)
{
	/* The mode argument only exists when a file may be created. */
	if (flags & (O_CREAT | __O_TMPFILE))
		return va_arg(ap, mode_t);
	return 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	MAP_PATH("open", path, -1);
	NEED_REAL(open, -1);
	return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	MAP_PATH("open64", path, -1);
	NEED_REAL(open64, -1);
	return REAL(open64)(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	MAP_PATH("openat", path, -1);
	NEED_REAL(openat, -1);
	return REAL(openat)(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	MAP_PATH("openat64", path, -1);
	NEED_REAL(openat64, -1);
	return REAL(openat64)(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE variants. */
int __open_2(const char *path, int flags)
{
	MAP_PATH("open", path, -1);
	NEED_REAL(__open_2, -1);
	return REAL(__open_2)(path, flags);
}

int __open64_2(const char *path, int flags)
{
	MAP_PATH("open64", path, -1);
	NEED_REAL(__open64_2, -1);
	return REAL(__open64_2)(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	MAP_PATH("openat", path, -1);
	NEED_REAL(__openat_2, -1);
	return REAL(__openat_2)(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	MAP_PATH("openat64", path, -1);
	NEED_REAL(__openat64_2, -1);
	return REAL(__openat64_2)(dirfd, path, flags);
}

FILE *fopen(const char *path, const char *mode)
{
	MAP_PATH("fopen", path, NULL);
	NEED_REAL(fopen, NULL);
	return REAL(fopen)(path, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
	MAP_PATH("fopen64", path, NULL);
	NEED_REAL(fopen64, NULL);
	return REAL(fopen64)(path, mode);
}

DIR *opendir(const char *path)
{
	MAP_PATH("opendir", path, NULL);
	NEED_REAL(opendir, NULL);
	return REAL(opendir)(path);
}

int stat(const char *path, struct stat *st)
{
	MAP_PATH("stat", path, -1);
	NEED_REAL(stat, -1);
	return REAL(stat)(path, st);
}

int stat64(const char *path, struct stat64 *st)
{
	MAP_PATH("stat64", path, -1);
	NEED_REAL(stat64, -1);
	return REAL(stat64)(path, st);
}

int lstat(const char *path, struct stat *st)
{
	MAP_PATH("lstat", path, -1);
	NEED_REAL(lstat, -1);
	return REAL(lstat)(path, st);
}

int lstat64(const char *path, struct stat64 *st)
{
	MAP_PATH("lstat64", path, -1);
	NEED_REAL(lstat64, -1);
	return REAL(lstat64)(path, st);
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	MAP_PATH("fstatat", path, -1);
	NEED_REAL(fstatat, -1);
	return REAL(fstatat)(dirfd, path, st, flags);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	MAP_PATH("fstatat64", path, -1);
	NEED_REAL(fstatat64, -1);
	return REAL(fstatat64)(dirfd, path, st, flags);
}

/* Pre-2.33 glibc stat entry points, still used by older binaries. */
int __xstat(int ver, const char *path, struct stat *st)
{
	MAP_PATH("stat", path, -1);
	NEED_REAL(__xstat, -1);
	return REAL(__xstat)(ver, path, st);
}

int __xstat64(int ver, const char *path, struct stat64 *st)
{
	MAP_PATH("stat64", path, -1);
	NEED_REAL(__xstat64, -1);
	return REAL(__xstat64)(ver, path, st);
}

int __lxstat(int ver, const char *path, struct stat *st)
{
	MAP_PATH("lstat", path, -1);
	NEED_REAL(__lxstat, -1);
	return REAL(__lxstat)(ver, path, st);
}

int __lxstat64(int ver, const char *path, struct stat64 *st)
{
	MAP_PATH("lstat64", path, -1);
	NEED_REAL(__lxstat64, -1);
	return REAL(__lxstat64)(ver, path, st);
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *st)
{
	MAP_PATH("statx", path, -1);
	NEED_REAL(statx, -1);
	return REAL(statx)(dirfd, path, flags, mask, st);
}

int access(const char *path, int mode)
{
	MAP_PATH("access", path, -1);
	NEED_REAL(access, -1);
	return REAL(access)(path, mode);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	MAP_PATH("faccessat", path, -1);
	NEED_REAL(faccessat, -1);
	return REAL(faccessat)(dirfd, path, mode, flags);
}

ssize_t readlink(const char *path, char *buf, size_t size)
{
	MAP_PATH("readlink", path, -1);
	NEED_REAL(readlink, -1);
	return REAL(readlink)(path, buf, size);
}

/* glibc's setmntent opens the file internally (not through fopen), so the
 * mount table kexec-tools scans for sysfs/debugfs must be redirected here. */
FILE *setmntent(const char *path, const char *mode)
{
	MAP_PATH("setmntent", path, NULL);
	NEED_REAL(setmntent, NULL);
	return REAL(setmntent)(path, mode);
}

/* --- deterministic randomness ------------------------------------------ */

static uint64_t splitmix64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void write_random_log(void)
{
	char path[4096];
	FILE *f;

	if (!oracle_out)
		return;
	snprintf(path, sizeof(path), "%s/getrandom.json", oracle_out);
	f = REAL(fopen)(path, "w");
	if (!f)
		return;
	fputs("[", f);
	for (int i = 0; i < random_count; i++) {
		size_t shown = random_records[i].len;

		if (shown > sizeof(random_records[i].bytes))
			shown = sizeof(random_records[i].bytes);
		fprintf(f, "%s\n  {\"len\": %zu, \"flags\": %u, \"hex\": \"", i ? "," : "",
			random_records[i].len, random_records[i].flags);
		for (size_t j = 0; j < shown; j++)
			fprintf(f, "%02x", random_records[i].bytes[j]);
		fputs("\"}", f);
	}
	fputs("\n]\n", f);
	fclose(f);
}

static ssize_t fake_getrandom(void *buf, size_t len, unsigned int flags)
{
	unsigned char *p = buf;

	oracle_init();

	if (len > MAX_RANDOM_BYTES)
		len = MAX_RANDOM_BYTES; /* short read, as the kernel may also do */
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix64();

		for (size_t j = 0; j < 8 && i + j < len; j++)
			p[i + j] = (unsigned char)(v >> (8 * j));
	}
	if (random_count < MAX_RANDOM_RECORDS) {
		size_t keep = len < sizeof(random_records[0].bytes) ? len :
			      sizeof(random_records[0].bytes);

		random_records[random_count].len = len;
		random_records[random_count].flags = flags;
		memcpy(random_records[random_count].bytes, p, keep);
		random_count++;
	}
	event("getrandom len=%zu flags=0x%x", len, flags);
	write_random_log();
	return (ssize_t)len;
}

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
	return fake_getrandom(buf, len, flags);
}

int getentropy(void *buf, size_t len)
{
	if (len > 256) {
		errno = EIO;
		return -1;
	}
	fake_getrandom(buf, len, 0);
	return 0;
}

/* --- the recorder ------------------------------------------------------- */

static int write_file(const char *path, const void *data, size_t len)
{
	FILE *f = REAL(fopen)(path, "wb");

	if (!f)
		return -1;
	if (len && fwrite(data, 1, len, f) != len) {
		fclose(f);
		return -1;
	}
	return fclose(f);
}

static long record_kexec_load(unsigned long entry, unsigned long nr,
			      const struct oracle_kexec_segment *segs, unsigned long flags)
{
	char path[4096];
	int n = load_counter++;
	FILE *f;

	event("kexec_load entry=0x%lx nr=%lu flags=0x%lx -> EPERM", entry, nr, flags);
	if (!oracle_out)
		goto out;
	for (unsigned long i = 0; i < nr && segs; i++) {
		snprintf(path, sizeof(path), "%s/kexec_load-%d-seg%02lu.bin", oracle_out, n, i);
		if (write_file(path, segs[i].buf, segs[i].buf ? segs[i].bufsz : 0) != 0)
			fprintf(stderr, "kexec_intercept: cannot write %s\n", path);
	}
	/* Write the manifest last (via a temporary name) so its presence means
	 * the segment files are complete. */
	snprintf(path, sizeof(path), "%s/kexec_load-%d.json.tmp", oracle_out, n);
	f = REAL(fopen)(path, "w");
	if (!f) {
		fprintf(stderr, "kexec_intercept: cannot write %s\n", path);
		goto out;
	}
	fprintf(f, "{\n  \"syscall\": \"kexec_load\",\n  \"entry\": \"0x%lx\",\n"
		   "  \"flags\": \"0x%lx\",\n  \"nr_segments\": %lu,\n  \"segments\": [",
		entry, flags, nr);
	for (unsigned long i = 0; i < nr && segs; i++) {
		fprintf(f, "%s\n    {\"index\": %lu, \"mem\": \"0x%lx\", \"memsz\": \"0x%zx\", "
			   "\"bufsz\": \"0x%zx\", \"buf_null\": %s, "
			   "\"file\": \"kexec_load-%d-seg%02lu.bin\"}",
			i ? "," : "", i, (unsigned long)segs[i].mem, segs[i].memsz,
			segs[i].bufsz, segs[i].buf ? "false" : "true", n, i);
	}
	fputs("\n  ]\n}\n", f);
	fclose(f);
	{
		char final[4096];

		snprintf(final, sizeof(final), "%s/kexec_load-%d.json", oracle_out, n);
		rename(path, final);
	}
out:
	errno = EPERM;
	return -1;
}

long syscall(long nr, ...)
{
	va_list ap;
	long a[6];

	oracle_init();

	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);

	switch (nr) {
	case SYS_kexec_load:
		return record_kexec_load((unsigned long)a[0], (unsigned long)a[1],
					 (const struct oracle_kexec_segment *)a[2],
					 (unsigned long)a[3]);
	case SYS_kexec_file_load:
		event("kexec_file_load kernel_fd=%ld initrd_fd=%ld cmdline_len=%ld "
		      "flags=0x%lx -> ENOSYS", a[0], a[1], a[2], a[4]);
		errno = ENOSYS;
		return -1;
	case SYS_reboot:
		event("reboot(syscall) cmd=0x%lx -> EPERM", a[2]);
		errno = EPERM;
		return -1;
	case SYS_getrandom:
		return fake_getrandom((void *)a[0], (size_t)a[1], (unsigned int)a[2]);
	}
	NEED_REAL(syscall, -1);
	return REAL(syscall)(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

int reboot(int cmd)
{
	oracle_init();
	event("reboot cmd=0x%x -> EPERM", cmd);
	errno = EPERM;
	return -1;
}

/* `kexec` without -l loads and then execs shutdown; `kexec -e`/-f takes
 * network interfaces down first. Neither may happen on the test host. */
int execv(const char *path, char *const argv[])
{
	oracle_init();
	(void)argv;
	event("execv %s -> EPERM", path);
	errno = EPERM;
	return -1;
}

int execve(const char *path, char *const argv[], char *const envp[])
{
	oracle_init();
	(void)argv;
	(void)envp;
	event("execve %s -> EPERM", path);
	errno = EPERM;
	return -1;
}

int execvp(const char *path, char *const argv[])
{
	oracle_init();
	(void)argv;
	event("execvp %s -> EPERM", path);
	errno = EPERM;
	return -1;
}

struct if_nameindex *if_nameindex(void)
{
	/* No interfaces: kexec's ifdown() then has nothing to take down. */
	struct if_nameindex *none = calloc(1, sizeof(*none));

	oracle_init();

	event("if_nameindex -> empty");
	return none;
}

void sync(void)
{
	oracle_init();
	event("sync skipped");
}

long sysconf(int name)
{
	oracle_init();
	if (ncpus_override > 0 &&
	    (name == _SC_NPROCESSORS_CONF || name == _SC_NPROCESSORS_ONLN))
		return ncpus_override;
	NEED_REAL(sysconf, -1);
	return REAL(sysconf)(name);
}
