/* Loads a raw BPF seccomp filter (or none) and times N calls of one syscall.
 * Built by bench/bench_profiles.py with `cc -O2`; prints ns per call.
 * usage: seccomp_loop FILTER.bpf|- NR ARG0 ARG1 ITERATIONS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s FILTER|- NR ARG0 ARG1 ITERATIONS\n", argv[0]);
        return 2;
    }
    long nr = strtol(argv[2], NULL, 0);
    unsigned long a0 = strtoul(argv[3], NULL, 0), a1 = strtoul(argv[4], NULL, 0);
    long n = strtol(argv[5], NULL, 0);
    if (argv[1][0] != '-') {
        static struct sock_filter insns[4096];
        FILE *f = fopen(argv[1], "rb");
        if (!f) { perror("open filter"); return 1; }
        size_t count = fread(insns, sizeof insns[0], 4096, f);
        fclose(f);
        struct sock_fprog prog = { .len = (unsigned short)count, .filter = insns };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { perror("no_new_privs"); return 1; }
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) { perror("seccomp"); return 1; }
    }
    for (long i = 0; i < n / 10; i++) syscall(nr, a0, a1);  /* warm up */
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) syscall(nr, a0, a1);
        double per = (now_ns() - t0) / n;
        if (per < best) best = per;
    }
    printf("%.1f\n", best);
    return 0;
}
