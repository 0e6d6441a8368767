/*
 * llama-healthcheck: the image's Docker HEALTHCHECK, with no shell and no curl.
 *
 *   llama-healthcheck [PORT]      (default 8080, the port llama-server listens on)
 *
 * GET /health on 127.0.0.1:PORT inside the container; exit 0 when the status
 * line says 200, 1 otherwise (refused, timed out, 503 while loading, garbage).
 * Every step has a deadline of 3 s, so a stopped server (SIGSTOP: the kernel
 * still accepts the connection) fails the probe instead of hanging it.
 * Built static in the builder stage; the runtime stage is FROM scratch.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int fail(const char *why) {
    fprintf(stderr, "llama-healthcheck: %s\n", why);
    return 1;
}

int main(int argc, char **argv) {
    long port = 8080;
    if (argc > 1) {
        char *end = NULL;
        port = strtol(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || port < 1 || port > 65535) {
            return fail("usage: llama-healthcheck [PORT]");
        }
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return fail("socket failed");
    }
    struct timeval deadline = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &deadline, sizeof deadline);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &deadline, sizeof deadline);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        return fail("connect failed");
    }
    static const char request[] = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    size_t sent = 0;
    while (sent < sizeof request - 1) {
        ssize_t n = send(fd, request + sent, sizeof request - 1 - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            return fail("send failed or timed out");
        }
        sent += (size_t)n;
    }
    /* Only the status line matters: "HTTP/1.x 200 ..." */
    char line[64];
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t n = recv(fd, line + got, sizeof line - 1 - got, 0);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        if (memchr(line, '\n', got) != NULL) {
            break;
        }
    }
    close(fd);
    line[got] = '\0';
    if (got < 12 || strncmp(line, "HTTP/1.", 7) != 0) {
        return fail("no HTTP status line (timed out or not llama-server)");
    }
    if (strncmp(line + 8, " 200", 4) != 0) {
        char *eol = strpbrk(line, "\r\n");
        if (eol != NULL) {
            *eol = '\0';
        }
        fprintf(stderr, "llama-healthcheck: %s\n", line);
        return 1;
    }
    return 0;
}
