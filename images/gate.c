/*
 * llama-gate: holds a started model container until llama-supervisord releases it,
 * then execs llama-server in its place (same PID: PID 1 of the container).
 *
 *   llama-gate FIFO PROGRAM [ARG...]
 *
 * Used for the daemon's standby containers (--standby, docs/DESIGN.md): the
 * container is started ahead of a request, with its namespaces, mounts, port and
 * limits set up, and waits here at no cost. The daemon releases it by opening the
 * FIFO (bind-mounted read-only from its state directory) and writing 'g'; the
 * start of the model then costs what a bare process launch costs, not what
 * `docker start` does. An open that finds no reader (ENXIO) tells the daemon the
 * gate is not waiting yet. EOF without the byte (the daemon only looked) waits
 * again. SIGTERM or SIGINT while waiting exits 0 at once: as PID 1, a signal with
 * no handler would be dropped and `docker stop` would wait out its timeout.
 * Built static in the builder stage; the runtime stage is FROM scratch.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: llama-gate FIFO PROGRAM [ARG...]\n", stderr);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
        perror("llama-gate: sigaction");
        return 1;
    }
    for (;;) {
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "llama-gate: open %s: %s\n", argv[1], strerror(errno));
            return 1;
        }
        char c = 0;
        ssize_t n;
        do
            n = read(fd, &c, 1);
        while (n < 0 && errno == EINTR);
        close(fd);
        if (n == 1 && c == 'g')
            break;
    }
    sa.sa_handler = SIG_DFL;           /* exec resets caught signals anyway; say it */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    execv(argv[2], argv + 2);
    fprintf(stderr, "llama-gate: exec %s: %s\n", argv[2], strerror(errno));
    return 127;
}
