#ifndef CCGATE_LINUX_SHIMS_H
#define CCGATE_LINUX_SHIMS_H

/// memfd_create(2) with MFD_ALLOW_SEALING | MFD_CLOEXEC; -1 and errno on failure.
int ccgate_memfd_create(const char *name);

/// Adds F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL; 0, or -1 and errno.
int ccgate_seal_all(int fd);

/// Whether all four seals are in place: 1 yes, 0 no, -1 and errno on failure.
int ccgate_is_sealed(int fd);

#endif
