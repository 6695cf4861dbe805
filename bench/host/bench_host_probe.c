/* bench_host_probe: the job bench_host starts, in a container, through the
 * agent or through plain crun. Its first act is to read the monotonic clock
 * (the same clock on the host and in the container: there is no time
 * namespace); then it connects to 127.0.0.1:$BENCH_PORT (the container
 * shares the host's network), writes "<$PIER_JOB_ID> <ns>\n", waits until
 * bench_host closes the connection (so the job is still running when its
 * "up" is reported, and the driver says when it ends), and exits 0. The
 * time it sent is the moment the job's own process ran.
 *
 * Linked statically, so that the benchmark's stack needs no libc: the
 * stack directory holds this binary and little else (bench/host/run). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    signal(SIGPIPE, SIG_IGN); /* a write to a closed socket is reported, not fatal */
    const char *port = getenv("BENCH_PORT");
    const char *id = getenv("PIER_JOB_ID");
    if (!port || !id) {
        fprintf(stderr, "bench_host_probe: BENCH_PORT and PIER_JOB_ID must be set\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("bench_host_probe: connect");
        return 1;
    }
    char line[160];
    int n = snprintf(line, sizeof(line), "%s %lld\n", id,
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (n <= 0 || (size_t)n >= sizeof(line) || write(fd, line, (size_t)n) != n) {
        perror("bench_host_probe: write");
        return 1;
    }
    alarm(300); /* a driver that died does not leave it running for ever */
    char c;
    while (read(fd, &c, 1) > 0)
        ;
    close(fd);
    return 0;
}
