#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include "linux_shims.h"

static const int all_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

int ccgate_memfd_create(const char *name) {
    return memfd_create(name, MFD_ALLOW_SEALING | MFD_CLOEXEC);
}

int ccgate_seal_all(int fd) {
    return fcntl(fd, F_ADD_SEALS, all_seals);
}

int ccgate_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return -1;
    return (seals & all_seals) == all_seals;
}
