#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include "linux_shims.h"

static const int all_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

int ccgate_memfd_create(const char *name) {
    /* Kernels from 6.3 with vm.memfd_noexec set refuse to execute a memfd made without
       MFD_EXEC; older kernels do not know the flag (EINVAL) and allow execution anyway. */
    int fd = memfd_create(name, MFD_ALLOW_SEALING | MFD_CLOEXEC | MFD_EXEC);
    if (fd < 0 && errno == EINVAL) fd = memfd_create(name, MFD_ALLOW_SEALING | MFD_CLOEXEC);
    return fd;
}

int ccgate_seal_all(int fd) {
    return fcntl(fd, F_ADD_SEALS, all_seals);
}

int ccgate_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return -1;
    return (seals & all_seals) == all_seals;
}
