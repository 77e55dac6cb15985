/*
 * notify: a stand-in for a daemon that speaks sd_notify from its own main
 * process. `notify MESSAGE CMD...` sends MESSAGE (e.g. "READY=1") to
 * $NOTIFY_SOCKET, then execs CMD in the same process, keeping the pid.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: notify MESSAGE CMD...\n");
        return 2;
    }
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || strlen(path) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
        fprintf(stderr, "notify: no usable NOTIFY_SOCKET\n");
        return 1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, argv[1], strlen(argv[1]), 0,
                         (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("notify");
        return 1;
    }
    close(fd);
    execvp(argv[2], argv + 2);
    perror("notify: exec");
    return 127;
}
