/* memhog MB [STEP_MB STEP_MS]: allocate and touch MB megabytes (all at once,
 * or STEP_MB every STEP_MS), print "held" and wait for a signal.
 * Static, so it runs in the busybox rootfs as well as on the host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long mb = argc > 1 ? atol(argv[1]) : 0;
    long step = argc > 2 ? atol(argv[2]) : mb;
    long ms = argc > 3 ? atol(argv[3]) : 0;
    struct timespec pause_ts = {ms / 1000, (ms % 1000) * 1000000L};
    for (long done = 0; done < mb; done += step) {
        long n = step < mb - done ? step : mb - done;
        char *p = malloc((size_t)n << 20);
        if (!p) { perror("malloc"); return 1; }
        memset(p, 1, (size_t)n << 20);
        printf("%ld\n", done + n);
        fflush(stdout);
        if (ms) nanosleep(&pause_ts, NULL);
    }
    printf("held\n");
    fflush(stdout);
    for (;;) pause();
}
