/* A Linux user program (static, not a tiny guest) that checks virtio-vsock from inside a Linux
 * guest: it listens on vsock port 52, connects to the host (CID 2) on port 1024, sends 1 MiB
 * and shuts down writing, prints the host's answer, then accepts the host's connection on
 * port 52, reads until the end, prints the byte count and sum, and answers "bye". */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static char big[1 << 20];

static int die(const char *what) {
    perror(what);
    return 1;
}

int main(void) {
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm me = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 52};
    if (l < 0 || bind(l, (void *)&me, sizeof me) || listen(l, 4)) return die("listen on 52");
    int c = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm host = {.svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = 1024};
    if (c < 0 || connect(c, (void *)&host, sizeof host)) return die("connect to 2:1024");
    for (unsigned i = 0; i < sizeof big; i++) big[i] = (char)(i * 7);
    for (size_t off = 0; off < sizeof big;) {
        ssize_t n = write(c, big + off, sizeof big - off);
        if (n <= 0) return die("write");
        off += n;
    }
    shutdown(c, SHUT_WR);
    char line[64];
    ssize_t n = read(c, line, sizeof line - 1);
    if (n <= 0) return die("read the host's answer");
    line[n] = 0;
    printf("GUEST GOT: %s", line);
    close(c);
    int s = accept(l, 0, 0);
    if (s < 0) return die("accept");
    unsigned long sum = 0, total = 0;
    while ((n = read(s, big, sizeof big)) > 0) {
        for (ssize_t i = 0; i < n; i++) sum += (unsigned char)big[i];
        total += n;
    }
    printf("GUEST RECEIVED %lu bytes sum %lu\n", total, sum);
    if (write(s, "bye\n", 4) != 4) return die("write bye");
    close(s);
    return 0;
}
