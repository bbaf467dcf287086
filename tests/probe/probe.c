/* probe: tries to break the sandbox from inside and prints what happened, one "key=value" per line.
 * Compiled at test time by tests/common/mod.rs (cc -O1) and bound into the sandbox read-only.
 *
 *   probe sys NAME...      raw syscall with harmless arguments; prints NAME=0 or NAME=ERRNO_NAME
 *   probe kill1            kill(1, SIGKILL|SIGTERM|SIGINT), ptrace(ATTACH, 1); then pid1_alive=yes|no
 *   probe fork N           fork until failure or N children; prints forked=K errno=NAME
 *   probe tcp PORT         connect to 127.0.0.1:PORT; prints tcp=0|ERRNO_NAME
 *   probe unix NAME        connect to the abstract unix socket "\0NAME"; prints unix=0|ERRNO_NAME
 *   probe ifaces           every network interface: iface=NAME up=0|1 loopback=0|1
 *   probe write PATH       open(O_WRONLY|O_CREAT|O_TRUNC) + write 1 byte; prints write=0|ERRNO_NAME
 *   probe mknod            mknod char dev, block dev, fifo in /tmp; prints chr=.. blk=.. fifo=..
 *   probe ioctl            ordinary ioctls: FIONREAD on a pipe (fionread=3), TCGETS on /dev/null (tcgets=ENOTTY)
 *   probe sleep SECS ...   sleeps (extra arguments are markers that show up in /proc/PID/cmdline)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EDQUOT: return "EDQUOT";
    case ENOKEY: return "ENOKEY";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
    }
}

/* result of a raw syscall: 0 on success (any non-negative return), else the errno */
static int rc(long r) { return r < 0 ? errno : 0; }

static int try_sys(const char *n) {
    char zero[512];
    memset(zero, 0, sizeof zero);
    errno = 0;
    if (!strcmp(n, "keyctl")) return rc(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 1));
    if (!strcmp(n, "add_key")) return rc(syscall(SYS_add_key, "user", "jobcell-probe", "x", 1, -2));
    if (!strcmp(n, "request_key")) return rc(syscall(SYS_request_key, "user", "jobcell-probe", NULL, 0));
    if (!strcmp(n, "bpf")) return rc(syscall(SYS_bpf, 0 /* MAP_CREATE */, zero, 64));
    if (!strcmp(n, "perf_event_open")) {
        /* attr.size = 0 -> default size; type 1 = software, config 0 = cpu-clock */
        unsigned int *a = (unsigned int *)zero;
        a[0] = 1;
        return rc(syscall(SYS_perf_event_open, zero, 0, -1, -1, 0));
    }
    if (!strcmp(n, "userfaultfd")) return rc(syscall(SYS_userfaultfd, 0));
    if (!strcmp(n, "io_uring_setup")) return rc(syscall(SYS_io_uring_setup, 1, zero));
    if (!strcmp(n, "open_by_handle_at")) return rc(syscall(SYS_open_by_handle_at, AT_FDCWD, zero, O_RDONLY));
    if (!strcmp(n, "name_to_handle_at")) return rc(syscall(SYS_name_to_handle_at, AT_FDCWD, "/", zero, zero + 256, 0));
#ifdef SYS_kexec_load
    if (!strcmp(n, "kexec_load")) return rc(syscall(SYS_kexec_load, 0, 0, NULL, 0));
#endif
    if (!strcmp(n, "init_module")) return rc(syscall(SYS_init_module, zero, 0, ""));
    if (!strcmp(n, "finit_module")) return rc(syscall(SYS_finit_module, 0, "", 0));
    if (!strcmp(n, "delete_module")) return rc(syscall(SYS_delete_module, "jobcell_probe", 0));
    if (!strcmp(n, "mount")) return rc(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(n, "umount2")) return rc(syscall(SYS_umount2, "/tmp", MNT_DETACH));
    if (!strcmp(n, "pivot_root")) return rc(syscall(SYS_pivot_root, "/tmp", "/tmp"));
    if (!strcmp(n, "unshare")) return rc(syscall(SYS_unshare, CLONE_NEWUSER));
    if (!strcmp(n, "unshare_ns")) return rc(syscall(SYS_unshare, CLONE_NEWNS));
    if (!strcmp(n, "setns")) {
        int fd = open("/proc/self/ns/uts", O_RDONLY);
        return rc(syscall(SYS_setns, fd, 0));
    }
    if (!strcmp(n, "chroot")) return rc(syscall(SYS_chroot, "/"));
    if (!strcmp(n, "ptrace")) {
        /* seize an own child: allowed by the kernel, so only the filter can refuse it */
        pid_t kid = fork();
        if (kid == 0) {
            pause();
            _exit(0);
        }
        int e = rc(syscall(SYS_ptrace, PTRACE_SEIZE, kid, 0, 0));
        kill(kid, SIGKILL);
        waitpid(kid, NULL, 0);
        return e;
    }
    if (!strcmp(n, "reboot"))
        return rc(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF, NULL));
    if (!strcmp(n, "swapon")) return rc(syscall(SYS_swapon, "/tmp/jobcell-no-swap", 0));
    if (!strcmp(n, "syslog")) return rc(syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0));
    if (!strcmp(n, "clock_settime")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return rc(syscall(SYS_clock_settime, CLOCK_REALTIME, &ts));
    }
    if (!strcmp(n, "settimeofday")) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        return rc(syscall(SYS_settimeofday, &tv, NULL));
    }
    if (!strcmp(n, "sethostname")) return rc(syscall(SYS_sethostname, "x", 1));
    if (!strcmp(n, "tiocsti")) {
        char c = 'x';
        int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
        if (fd < 0) fd = 0;
        return rc(syscall(SYS_ioctl, fd, TIOCSTI, &c));
    }
    if (!strcmp(n, "clone_newuser") || !strcmp(n, "clone_newns") || !strcmp(n, "clone_newpid") ||
        !strcmp(n, "clone_newnet") || !strcmp(n, "clone_plain")) {
        unsigned long f = SIGCHLD;
        if (!strcmp(n, "clone_newuser")) f |= CLONE_NEWUSER;
        if (!strcmp(n, "clone_newns")) f |= CLONE_NEWNS;
        if (!strcmp(n, "clone_newpid")) f |= CLONE_NEWPID;
        if (!strcmp(n, "clone_newnet")) f |= CLONE_NEWNET;
        long r = syscall(SYS_clone, f, NULL, NULL, NULL, NULL);
        if (r == 0) _exit(0);
        if (r > 0) {
            waitpid((pid_t)r, NULL, 0);
            return 0;
        }
        return errno;
    }
    if (!strcmp(n, "clone3")) {
        unsigned long args[11];
        memset(args, 0, sizeof args);
        args[4] = SIGCHLD; /* exit_signal */
        long r = syscall(435 /* clone3 on every arch */, args, sizeof args);
        if (r == 0) _exit(0);
        if (r > 0) {
            waitpid((pid_t)r, NULL, 0);
            return 0;
        }
        return errno;
    }
    if (!strcmp(n, "memfd_secret")) return rc(syscall(447 /* memfd_secret, not in the allowlist */, 0));
    if (!strcmp(n, "bogus")) return rc(syscall(1000));
    if (!strcmp(n, "getpid")) return rc(syscall(SYS_getpid));
    if (!strcmp(n, "personality_query")) return rc(syscall(SYS_personality, 0xffffffffUL));
    if (!strcmp(n, "personality_no_randomize")) return rc(syscall(SYS_personality, 0x0040000UL /* ADDR_NO_RANDOMIZE */));
    fprintf(stderr, "probe: unknown syscall test %s\n", n);
    exit(2);
}

static int cmd_kill1(void) {
    /* pid 1 forwards what it receives to the payload (us): ignore those so we live to report */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    printf("kill_sigkill=%s\n", ename(kill(1, SIGKILL) ? errno : 0));
    printf("kill_sigterm=%s\n", ename(kill(1, SIGTERM) ? errno : 0));
    printf("kill_sigint=%s\n", ename(kill(1, SIGINT) ? errno : 0));
    printf("ptrace_attach=%s\n", ename(ptrace(PTRACE_ATTACH, 1, 0, 0) ? errno : 0));
    printf("ptrace_seize=%s\n", ename(ptrace(PTRACE_SEIZE, 1, 0, 0) ? errno : 0));
    int fd = open("/proc/1/mem", O_RDONLY);
    printf("pid1_mem=%s\n", ename(fd < 0 ? errno : 0));
    usleep(200000);
    printf("pid1_alive=%s\n", kill(1, 0) == 0 ? "yes" : "no");
    return 0;
}

static int cmd_fork(int max) {
    int n = 0, err = 0;
    pid_t kids[4096];
    while (n < max && n < 4096) {
        pid_t p = fork();
        if (p == 0) {
            pause();
            _exit(0);
        }
        if (p < 0) {
            err = errno;
            break;
        }
        kids[n++] = p;
    }
    printf("forked=%d\nerrno=%s\n", n, ename(err));
    fflush(stdout);
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < n; i++) waitpid(kids[i], NULL, 0);
    /* afterwards forking works again */
    pid_t p = fork();
    if (p == 0) _exit(0);
    printf("fork_after=%s\n", p > 0 ? "0" : ename(errno));
    if (p > 0) waitpid(p, NULL, 0);
    return 0;
}

static int cmd_tcp(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("tcp=%s\n", ename(r ? errno : 0));
    /* and a non-loopback address of the outside world */
    int s2 = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s2, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    a.sin_addr.s_addr = inet_addr("1.1.1.1");
    a.sin_port = htons(80);
    r = connect(s2, (struct sockaddr *)&a, sizeof a);
    printf("tcp_outside=%s\n", ename(r ? errno : 0));
    return 0;
}

static int cmd_unix(const char *name) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t l = strlen(name);
    if (l > sizeof a.sun_path - 1) l = sizeof a.sun_path - 1;
    memcpy(a.sun_path + 1, name, l);
    int r = connect(s, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + l));
    printf("unix=%s\n", ename(r ? errno : 0));
    return 0;
}

static int cmd_ifaces(void) {
    struct if_nameindex *ifs = if_nameindex();
    if (!ifs) {
        printf("ifaces_error=%s\n", ename(errno));
        return 1;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    for (struct if_nameindex *i = ifs; i->if_index; i++) {
        struct ifreq r;
        memset(&r, 0, sizeof r);
        strncpy(r.ifr_name, i->if_name, IFNAMSIZ - 1);
        if (ioctl(s, SIOCGIFFLAGS, &r) == 0)
            printf("iface=%s up=%d loopback=%d\n", i->if_name, (r.ifr_flags & IFF_UP) ? 1 : 0,
                   (r.ifr_flags & IFF_LOOPBACK) ? 1 : 0);
        else
            printf("iface=%s up=%s loopback=%s\n", i->if_name, ename(errno), ename(errno));
    }
    if_freenameindex(ifs);
    return 0;
}

static int cmd_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("write=%s\n", ename(errno));
        return 0;
    }
    int r = (int)write(fd, "x", 1);
    printf("write=%s\n", ename(r < 0 ? errno : 0));
    close(fd);
    return 0;
}

static int cmd_mknod(void) {
    printf("chr=%s\n", ename(mknod("/tmp/probe-chr", S_IFCHR | 0600, makedev(1, 3)) ? errno : 0));
    printf("blk=%s\n", ename(mknod("/tmp/probe-blk", S_IFBLK | 0600, makedev(8, 0)) ? errno : 0));
    printf("chr_at=%s\n", ename(mknodat(AT_FDCWD, "/tmp/probe-chr2", S_IFCHR | 0600, makedev(1, 3)) ? errno : 0));
    printf("fifo=%s\n", ename(mkfifo("/tmp/probe-fifo", 0600) ? errno : 0));
    struct stat st;
    printf("fifo_is_fifo=%d\n", stat("/tmp/probe-fifo", &st) == 0 && S_ISFIFO(st.st_mode));
    printf("chr_exists=%d\n", stat("/tmp/probe-chr", &st) == 0);
    return 0;
}

static int cmd_ioctl(void) {
    int p[2];
    if (pipe(p)) return 1;
    if (write(p[1], "abc", 3) != 3) return 1;
    int n = -1;
    int r = ioctl(p[0], FIONREAD, &n);
    if (r) printf("fionread=%s\n", ename(errno));
    else printf("fionread=%d\n", n);
    struct termios t;
    int fd = open("/dev/null", O_RDWR);
    r = ioctl(fd, TCGETS, &t);
    printf("tcgets=%s\n", ename(r ? errno : 0));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return 2;
    const char *c = argv[1];
    if (!strcmp(c, "sys")) {
        for (int i = 2; i < argc; i++) printf("%s=%s\n", argv[i], ename(try_sys(argv[i])));
        return 0;
    }
    if (!strcmp(c, "kill1")) return cmd_kill1();
    if (!strcmp(c, "fork") && argc > 2) return cmd_fork(atoi(argv[2]));
    if (!strcmp(c, "tcp") && argc > 2) return cmd_tcp(atoi(argv[2]));
    if (!strcmp(c, "unix") && argc > 2) return cmd_unix(argv[2]);
    if (!strcmp(c, "ifaces")) return cmd_ifaces();
    if (!strcmp(c, "write") && argc > 2) return cmd_write(argv[2]);
    if (!strcmp(c, "mknod")) return cmd_mknod();
    if (!strcmp(c, "ioctl")) return cmd_ioctl();
    if (!strcmp(c, "sleep") && argc > 2) return sleep((unsigned)atoi(argv[2])), 0;
    fprintf(stderr, "probe: bad arguments\n");
    return 2;
}
