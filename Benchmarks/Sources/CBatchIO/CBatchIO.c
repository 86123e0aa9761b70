#define _GNU_SOURCE
#include "CBatchIO.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Swift's Glibc module does not export sendmmsg/recvmmsg (they are GNU extensions), so the
   load generator's batching lives in these two small functions. */

int natchat_batch_send(int fd, uint32_t address, uint16_t port,
                       const uint8_t *base, const uint32_t *lengths, uint32_t slot, uint32_t count) {
    if (count > NATCHAT_BATCH_MAX) count = NATCHAT_BATCH_MAX;
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(address);
    struct mmsghdr messages[NATCHAT_BATCH_MAX];
    struct iovec vectors[NATCHAT_BATCH_MAX];
    memset(messages, 0, sizeof(struct mmsghdr) * count);
    for (uint32_t i = 0; i < count; i++) {
        vectors[i].iov_base = (void *)(base + (size_t)i * slot);
        vectors[i].iov_len = lengths[i];
        messages[i].msg_hdr.msg_name = &to;
        messages[i].msg_hdr.msg_namelen = sizeof to;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(fd, messages, count, MSG_DONTWAIT);
}

int natchat_batch_receive(int fd, uint8_t *base, uint32_t *lengths, uint32_t slot, uint32_t count) {
    if (count > NATCHAT_BATCH_MAX) count = NATCHAT_BATCH_MAX;
    struct mmsghdr messages[NATCHAT_BATCH_MAX];
    struct iovec vectors[NATCHAT_BATCH_MAX];
    memset(messages, 0, sizeof(struct mmsghdr) * count);
    for (uint32_t i = 0; i < count; i++) {
        vectors[i].iov_base = base + (size_t)i * slot;
        vectors[i].iov_len = slot;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    int received = recvmmsg(fd, messages, count, MSG_DONTWAIT, NULL);
    if (received < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    for (int i = 0; i < received; i++) lengths[i] = messages[i].msg_len;
    return received;
}
