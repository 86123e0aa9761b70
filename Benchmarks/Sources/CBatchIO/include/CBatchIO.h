#ifndef NATCHAT_CBATCHIO_H
#define NATCHAT_CBATCHIO_H

#include <stdint.h>

/// The largest batch one call sends or receives.
#define NATCHAT_BATCH_MAX 64

/// Sends `count` (at most NATCHAT_BATCH_MAX) datagrams with one sendmmsg(2): datagram i is
/// lengths[i] bytes at base + i * slot, all to the IPv4 address `address`:`port` (host
/// order). Returns how many the kernel took, or -1 with errno set (EAGAIN when none fit).
int natchat_batch_send(int fd, uint32_t address, uint16_t port,
                       const uint8_t *base, const uint32_t *lengths, uint32_t slot, uint32_t count);

/// Receives up to `count` (at most NATCHAT_BATCH_MAX) datagrams with one non-blocking
/// recvmmsg(2) into base + i * slot (each at most `slot` bytes; longer ones are cut),
/// writing their lengths to lengths[i]. Returns how many arrived, 0 when none were waiting,
/// or -1 with errno set.
int natchat_batch_receive(int fd, uint8_t *base, uint32_t *lengths, uint32_t slot, uint32_t count);

#endif
