/* A Linux user program (static, not a tiny guest) that reads the microVM metadata service
 * (MMDS, version 2) from inside a Linux guest, as EC2-style agents do: it gets a session token
 * with PUT /latest/api/token, GETs a key with the token and prints the value, GETs it without
 * a token and prints the status line, then GETs it with the token until the value changes
 * (the host changes the store when it sees the first value) and prints the new value.
 * busybox wget cannot send a PUT, hence this program. Exits 0 when every step got an answer. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define KEY "/latest/meta-data/ami-id"

/* One answer: the status line and the body, NUL-terminated. */
struct answer {
    char status[64];
    char body[512];
};

/* The value of header `name` in the head `head` (which ends at its blank line), or -1. */
static long header(const char *head, const char *name) {
    size_t len = strlen(name);
    /* `eol` is the end of the line before each header line, up to the head's end. */
    for (const char *eol = strstr(head, "\r\n"); eol && strncmp(eol, "\r\n\r\n", 4);
         eol = strstr(eol + 2, "\r\n")) {
        const char *line = eol + 2;
        if (!strncasecmp(line, name, len) && line[len] == ':') return strtol(line + len + 1, 0, 10);
    }
    return -1;
}

/* Sends `request` to the MMDS on a connection of its own and reads one answer into `a`
 * (its Content-Length decides where it ends; the connection may stay open). */
static int ask(const char *request, struct answer *a) {
    static char buf[4096];
    struct sockaddr_in mmds = {.sin_family = AF_INET, .sin_port = htons(80)};
    struct timeval limit = {.tv_sec = 60};
    inet_pton(AF_INET, "169.254.169.254", &mmds.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) ||
        connect(s, (void *)&mmds, sizeof mmds)) {
        perror("connect to 169.254.169.254:80");
        return -1;
    }
    if (write(s, request, strlen(request)) != (ssize_t)strlen(request)) {
        perror("send the request");
        return -1;
    }
    size_t got = 0;
    long want = -1;
    while (got < sizeof buf - 1) {
        ssize_t n = read(s, buf + got, sizeof buf - 1 - got);
        if (n <= 0) break;
        got += n;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (end && want < 0) want = header(buf, "Content-Length");
        if (end && want >= 0 && got >= (size_t)(end + 4 - buf) + want) break;
    }
    close(s);
    buf[got] = 0;
    char *line_end = strstr(buf, "\r\n"), *end = strstr(buf, "\r\n\r\n");
    if (!line_end || !end) {
        fprintf(stderr, "no complete answer: '%s'\n", buf);
        return -1;
    }
    snprintf(a->status, sizeof a->status, "%.*s", (int)(line_end - buf), buf);
    snprintf(a->body, sizeof a->body, "%s", end + 4);
    return 0;
}

int main(void) {
    struct answer token, first, refused, later;
    if (ask("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            "X-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\r\n",
            &token))
        return 1;
    printf("MMDS TOKEN: %s, %zu bytes\n", token.status, strlen(token.body));
    char get[sizeof token.body + 128];
    snprintf(get, sizeof get,
             "GET " KEY " HTTP/1.1\r\nHost: 169.254.169.254\r\nX-metadata-token: %s\r\n\r\n",
             token.body);
    if (ask(get, &first)) return 1;
    printf("MMDS GOT: %s %s\n", first.status, first.body);
    fflush(stdout);
    if (ask("GET " KEY " HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", &refused)) return 1;
    printf("MMDS NO TOKEN: %s\n", refused.status);
    for (int i = 0; i < 300; i++) {
        if (ask(get, &later)) return 1;
        if (strcmp(later.body, first.body)) {
            printf("MMDS CHANGED: %s %s\n", later.status, later.body);
            return 0;
        }
        usleep(200 * 1000);
    }
    printf("MMDS UNCHANGED after 60 s: %s\n", later.body);
    return 1;
}
