/*
 * rtpload: RTP/SRTP load generator and sink for bench/bench_media.py.
 *
 * One thread, pinned to one CPU: it sends every stream's packets on schedule from
 * the stream's own source socket (so a relay can latch symmetric RTP from the first packet) and
 * reads what comes back on the sink sockets, then prints one JSON object on stdout.
 *
 *   rtpload --plan FILE --duration SECONDS [--cpu N] [--packets FILE] [--pps-per-stream 50]
 *           [--drain-ms 500] [--late-ms 60]
 *
 * Plan file, one item per line ('#' starts a comment):
 *   sock <id> fd <n>        an inherited, already bound UDP socket (ids 0, 1, 2... in order)
 *   sock <id> port <p>      or: bind 127.0.0.1:<p> here
 *   stream <src sock> <dst ipv4> <dst port> <sink sock> <ssrc> <seq0> <ts0> <expected length>
 *          <packets offset>
 * A socket may be the source of several streams but the sink of at most one: the sink socket
 * names the stream a packet belongs to, and the RTP sequence number (bytes 2-3, in clear in SRTP
 * too) names the packet.  <packets offset> is -1 for a plain RTP stream built here (172 bytes:
 * 12-byte header, PT 0, 160 bytes of payload; sequence number +1 and timestamp +160 per packet),
 * or the byte offset in --packets of that stream's ready-made packets (SRTP, pre-encrypted by
 * bench_media.py): <u16 little-endian length><bytes>, one per packet, in sending order.
 *
 * Schedule: each stream sends pps-per-stream packets a second for --duration seconds; the
 * streams' send times are spread evenly over the period (global packet j goes at t0 + j / R,
 * stream j mod S, where R = S * pps).  After the last send it waits up to --drain-ms for what is
 * still in flight.  Latency is the kernel's receive time stamp (SO_TIMESTAMPNS) at the sink minus
 * the time read just before sendto(), per (stream, sequence number).
 *
 * Between sends it sleeps in epoll_pwait2 until the next packet is due (busy-polls when that is
 * under 30 us away).  "busy_fraction" is the share of the sending phase spent in loop iterations
 * that sent or received something (its headroom: near 1, the generator is the limit); "cpu_s" is
 * its getrusage time, spinning included.
 *
 * The median latency of the packets sent in the first and in the last quarter of the step is
 * reported too: a relay that cannot keep up builds a backlog (its socket buffers hold seconds of
 * 50 pps streams), which shows as a growing latency long before packets are dropped.
 *
 * Memory: 8 bytes of send time and 1 bit per packet (streams x pps x duration), a 4 MB latency
 * histogram (1 us bins up to 1 s), plus the mmapped packets file.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif
#define SK_MEMINFO_DROPS 8
#define SK_MEMINFO_VARS 9

#define RTP_LEN 172
#define MAX_PKT 2048
#define RECV_BATCH 16
#define SEND_BURST 64
#define HIST_US 1000000 /* 1 us bins up to 1 s; beyond that in the last bin */
#define QHIST 10000      /* 100 us bins up to 1 s, for the first and the last quarter */

struct stream {
    int src;            /* socket index */
    int sink;           /* socket index */
    struct sockaddr_in dst;
    uint32_t ssrc;
    uint16_t seq0;
    uint32_t ts0;
    int expect_len;
    long long pkt_off;  /* -1: built here */
    long long cursor;   /* next ready-made packet in the mmapped file */
    long max_idx;       /* highest index received, for out-of-order counting */
};

struct sock {
    int fd;
    int stream;         /* the stream this socket is the sink of, or -1 */
    uint32_t drops0;
};

static struct stream *streams;
static int nstreams, cap_streams;
static struct sock *socks;
static int nsocks, cap_socks;

static void die(const char *what) {
    fprintf(stderr, "rtpload: %s: %s\n", what, errno ? strerror(errno) : "invalid");
    exit(2);
}

static void fail(const char *msg, const char *detail) {
    fprintf(stderr, "rtpload: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

static int64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint32_t sock_drops(int fd) {
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof mem;
    memset(mem, 0, sizeof mem);
    if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0 || len < sizeof mem)
        return 0;
    return mem[SK_MEMINFO_DROPS];
}

static void add_sock(int id, int fd) {
    if (id != nsocks)
        fail("plan: socket ids must be 0, 1, 2... in order", NULL);
    if (nsocks == cap_socks) {
        cap_socks = cap_socks ? cap_socks * 2 : 1024;
        socks = realloc(socks, sizeof *socks * cap_socks);
        if (!socks)
            die("realloc");
    }
    socks[nsocks].fd = fd;
    socks[nsocks].stream = -1;
    nsocks++;
}

static void read_plan(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        die(path);
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char kind[16], how[16], ip[64];
        int id, n;
        if (sscanf(line, "%15s", kind) != 1)
            continue;
        if (strcmp(kind, "sock") == 0) {
            if (sscanf(line, "%*s %d %15s %d", &id, how, &n) != 3)
                fail("plan: bad sock line", line);
            if (strcmp(how, "fd") == 0) {
                add_sock(id, n);
            } else if (strcmp(how, "port") == 0) {
                int fd = socket(AF_INET, SOCK_DGRAM, 0);
                struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)n)};
                a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
                    die("bind");
                add_sock(id, fd);
            } else {
                fail("plan: sock <id> fd|port <n>", line);
            }
        } else if (strcmp(kind, "stream") == 0) {
            struct stream s;
            unsigned long ssrc, seq0, ts0;
            int src, sink, port, elen;
            long long off;
            memset(&s, 0, sizeof s);
            if (sscanf(line, "%*s %d %63s %d %d %lu %lu %lu %d %lld", &src, ip, &port, &sink,
                       &ssrc, &seq0, &ts0, &elen, &off) != 9)
                fail("plan: bad stream line", line);
            if (src < 0 || src >= nsocks || sink < 0 || sink >= nsocks)
                fail("plan: stream names an unknown socket", line);
            if (socks[sink].stream >= 0)
                fail("plan: a socket is the sink of two streams", line);
            s.src = src;
            s.sink = sink;
            s.dst.sin_family = AF_INET;
            s.dst.sin_port = htons((uint16_t)port);
            if (inet_pton(AF_INET, ip, &s.dst.sin_addr) != 1)
                fail("plan: bad IPv4 address", ip);
            s.ssrc = (uint32_t)ssrc;
            s.seq0 = (uint16_t)seq0;
            s.ts0 = (uint32_t)ts0;
            s.expect_len = elen;
            s.pkt_off = off;
            s.cursor = off;
            s.max_idx = -1;
            if (nstreams == cap_streams) {
                cap_streams = cap_streams ? cap_streams * 2 : 1024;
                streams = realloc(streams, sizeof *streams * cap_streams);
                if (!streams)
                    die("realloc");
            }
            socks[sink].stream = nstreams;
            streams[nstreams++] = s;
        } else {
            fail("plan: unknown line", line);
        }
    }
    fclose(f);
    if (nstreams == 0)
        fail("plan: no streams", NULL);
}

/* epoll_wait with a nanosecond timeout (epoll_pwait2, Linux 5.11); else milliseconds. */
static int wait_events(int ep, struct epoll_event *evs, int max, int64_t timeout_ns) {
    if (timeout_ns <= 0)
        return epoll_wait(ep, evs, max, 0);
#ifdef SYS_epoll_pwait2
    static int have_pwait2 = 1;
    if (have_pwait2) {
        struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL,
                              .tv_nsec = timeout_ns % 1000000000LL};
        int n = (int)syscall(SYS_epoll_pwait2, ep, evs, max, &ts, NULL, 0);
        if (n >= 0 || errno != ENOSYS)
            return n < 0 ? 0 : n;
        have_pwait2 = 0;
    }
#endif
    int n = epoll_wait(ep, evs, max, (int)((timeout_ns + 999999) / 1000000));
    return n < 0 ? 0 : n;
}

static double percentile(const uint32_t *hist, int bins, uint64_t total, double q) {
    if (total == 0)
        return -1;
    uint64_t want = (uint64_t)(q * (double)(total - 1)) + 1, seen = 0;
    for (int i = 0; i <= bins; i++) {
        seen += hist[i];
        if (seen >= want)
            return i;
    }
    return bins;
}

int main(int argc, char **argv) {
    const char *plan = NULL, *packets = NULL;
    double duration = 0, pps = 50, drain_ms = 500, late_ms = 60;
    int cpu = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            fail("missing value for", a);
        if (!strcmp(a, "--plan"))
            plan = v;
        else if (!strcmp(a, "--packets"))
            packets = v;
        else if (!strcmp(a, "--duration"))
            duration = atof(v);
        else if (!strcmp(a, "--cpu"))
            cpu = atoi(v);
        else if (!strcmp(a, "--pps-per-stream"))
            pps = atof(v);
        else if (!strcmp(a, "--drain-ms"))
            drain_ms = atof(v);
        else if (!strcmp(a, "--late-ms"))
            late_ms = atof(v);
        else
            fail("unknown option", a);
        i++;
    }
    if (!plan || duration <= 0 || pps <= 0 || duration > 600 || drain_ms < 0 || drain_ms > 10000)
        fail("usage: rtpload --plan FILE --duration S (<= 600) [--cpu N] [--packets FILE] "
             "[--pps-per-stream 50] [--drain-ms 500] [--late-ms 60]", NULL);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    read_plan(plan);

    const unsigned char *pk = NULL;
    size_t pk_len = 0;
    if (packets) {
        int fd = open(packets, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
            die(packets);
        pk_len = (size_t)st.st_size;
        if (pk_len) {
            pk = mmap(NULL, pk_len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
            if (pk == MAP_FAILED)
                die("mmap");
        }
        close(fd);
    }
    for (int s = 0; s < nstreams; s++)
        if (streams[s].pkt_off >= 0 && (!pk || (size_t)streams[s].pkt_off >= pk_len))
            fail("plan: packets offset outside --packets", NULL);

    long npkt = (long)(pps * duration + 0.5); /* per stream */
    if (npkt < 1 || npkt > 65535)
        fail("pps-per-stream x duration must be 1..65535 (one sequence number cycle)", NULL);
    uint64_t total = (uint64_t)npkt * (uint64_t)nstreams;
    int64_t *sent_at = calloc(total, sizeof *sent_at);       /* CLOCK_REALTIME ns, 0 = unsent */
    uint8_t *got = calloc((total + 7) / 8, 1);
    uint32_t *hist = calloc(HIST_US + 1, sizeof *hist);
    static uint32_t qhist[2][QHIST + 1];
    uint64_t qcount[2] = {0, 0};
    const long quarter = npkt / 4 > 0 ? npkt / 4 : 1;
    if (!sent_at || !got || !hist)
        die("calloc");

    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    int one = 1, rcvbuf = 1 << 20;
    for (int i = 0; i < nsocks; i++) {
        int fd = socks[i].fd;
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            die("fcntl (is the fd open?)");
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        if (socks[i].stream >= 0) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                die("epoll_ctl");
        }
    }

    static unsigned char rbuf[RECV_BATCH][MAX_PKT];
    static char cbuf[RECV_BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iovs[RECV_BATCH];
    struct epoll_event evs[512];

    /* Discard anything queued before the start (probe leftovers, a previous step's stragglers). */
    uint64_t stale = 0;
    for (int i = 0; i < nsocks; i++) {
        while (recv(socks[i].fd, rbuf[0], MAX_PKT, MSG_DONTWAIT) >= 0)
            stale++;
        socks[i].drops0 = sock_drops(socks[i].fd);
    }

    unsigned char tx[MAX_PKT];
    memset(tx, 0xd5, sizeof tx); /* payload: PCMU-ish filler */
    const double interval_ns = 1e9 / (pps * nstreams);
    const int64_t late_ns = (int64_t)(late_ms * 1e6);
    uint64_t next = 0, received = 0, dups = 0, unknown = 0, badlen = 0, late = 0, ooo = 0;
    uint64_t send_errors = 0, sent = 0, late_sends = 0, no_stamp = 0;
    int64_t max_lag = 0, last_send = 0, work_ns = 0;
    const int64_t t0 = clock_ns(CLOCK_MONOTONIC) + 20000000LL; /* 20 ms to settle */
    const int64_t send_end = t0 + (int64_t)((double)total * interval_ns);
    const int64_t hard_end = send_end + (int64_t)(drain_ms * 1e6);

    for (;;) {
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        int64_t timeout = 0;
        int sent_some = 0, got_some = 0;
        /* Send what is due, at most SEND_BURST at a time so receiving is interleaved. */
        for (int burst = 0;; burst++) {
            if (next >= total) {
                timeout = hard_end - now;
                break;
            }
            int64_t due = t0 + (int64_t)((double)next * interval_ns);
            if (due > now) {
                timeout = due - now;
                break;
            }
            if (burst == SEND_BURST)
                break; /* timeout 0: receive, then carry on sending */
            int s = (int)(next % (uint64_t)nstreams);
            long k = (long)(next / (uint64_t)nstreams);
            struct stream *st = &streams[s];
            const unsigned char *buf;
            size_t len;
            if (st->pkt_off >= 0) {
                if ((size_t)st->cursor + 2 > pk_len)
                    fail("packets file too short", NULL);
                len = (size_t)pk[st->cursor] | ((size_t)pk[st->cursor + 1] << 8);
                if ((size_t)st->cursor + 2 + len > pk_len || len > MAX_PKT)
                    fail("packets file too short", NULL);
                buf = pk + st->cursor + 2;
                st->cursor += 2 + (long long)len;
            } else {
                uint16_t seq = (uint16_t)(st->seq0 + k);
                uint32_t ts = st->ts0 + (uint32_t)k * 160u, ssrc = st->ssrc;
                tx[0] = 0x80;
                tx[1] = 0; /* PT 0 (PCMU), no marker */
                tx[2] = seq >> 8;
                tx[3] = seq & 0xff;
                tx[4] = ts >> 24; tx[5] = ts >> 16; tx[6] = ts >> 8; tx[7] = ts;
                tx[8] = ssrc >> 24; tx[9] = ssrc >> 16; tx[10] = ssrc >> 8; tx[11] = ssrc;
                buf = tx;
                len = RTP_LEN;
            }
            int64_t lag = now - due;
            if (lag > max_lag)
                max_lag = lag;
            if (lag > 1000000)
                late_sends++;
            sent_at[(uint64_t)s * npkt + k] = clock_ns(CLOCK_REALTIME);
            if (sendto(socks[st->src].fd, buf, len, 0, (struct sockaddr *)&st->dst,
                       sizeof st->dst) < 0)
                send_errors++;
            else
                sent++;
            next++;
            last_send = now;
            sent_some = 1;
        }
        /* Receive, or sleep until the next send is due (at most 1 ms, to see the end). */
        if (timeout < 30000)
            timeout = 0;
        else if (timeout > 1000000)
            timeout = 1000000;
        int64_t sends_done = clock_ns(CLOCK_MONOTONIC);
        int n = wait_events(ep, evs, 512, timeout);
        int64_t wait_done = clock_ns(CLOCK_MONOTONIC);
        for (int e = 0; e < n; e++) {
            struct sock *sk = &socks[evs[e].data.u32];
            for (int m = 0; m < RECV_BATCH; m++) {
                iovs[m].iov_base = rbuf[m];
                iovs[m].iov_len = MAX_PKT;
                memset(&msgs[m].msg_hdr, 0, sizeof msgs[m].msg_hdr);
                msgs[m].msg_hdr.msg_iov = &iovs[m];
                msgs[m].msg_hdr.msg_iovlen = 1;
                msgs[m].msg_hdr.msg_control = cbuf[m];
                msgs[m].msg_hdr.msg_controllen = sizeof cbuf[m];
            }
            int r = recvmmsg(sk->fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (r <= 0)
                continue;
            got_some = 1;
            int64_t fallback = clock_ns(CLOCK_REALTIME);
            struct stream *st = &streams[sk->stream];
            for (int m = 0; m < r; m++) {
                unsigned len = msgs[m].msg_len;
                if (len < 12) {
                    unknown++;
                    continue;
                }
                uint16_t seq = (uint16_t)((rbuf[m][2] << 8) | rbuf[m][3]);
                long idx = (uint16_t)(seq - st->seq0);
                if (idx >= npkt) {
                    unknown++;
                    continue;
                }
                uint64_t slot = (uint64_t)sk->stream * npkt + idx;
                if (sent_at[slot] == 0) {
                    unknown++; /* not sent (yet): not ours */
                    continue;
                }
                if (got[slot >> 3] & (1u << (slot & 7))) {
                    dups++;
                    continue;
                }
                got[slot >> 3] |= (uint8_t)(1u << (slot & 7));
                received++;
                if ((int)len != st->expect_len)
                    badlen++;
                if (idx < st->max_idx)
                    ooo++;
                else
                    st->max_idx = idx;
                int64_t rx = 0;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[m].msg_hdr); c;
                     c = CMSG_NXTHDR(&msgs[m].msg_hdr, c)) {
                    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(c), sizeof ts);
                        rx = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                    }
                }
                if (rx == 0) {
                    rx = fallback;
                    no_stamp++;
                }
                int64_t lat = rx - sent_at[slot];
                if (lat > late_ns)
                    late++;
                int64_t us = lat < 0 ? 0 : lat / 1000;
                hist[us > HIST_US ? HIST_US : us]++;
                int q = idx < quarter ? 0 : idx >= npkt - quarter ? 1 : -1;
                if (q >= 0) {
                    qhist[q][us / 100 > QHIST ? QHIST : us / 100]++;
                    qcount[q]++;
                }
            }
        }
        int64_t after = clock_ns(CLOCK_MONOTONIC);
        /* Work: sending, reading, and a poll that found something; not sleeping. */
        if (now < send_end) {
            if (sent_some)
                work_ns += sends_done - now;
            if (got_some)
                work_ns += after - wait_done + (timeout == 0 ? wait_done - sends_done : 0);
        }
        if (next >= total && (received >= sent || after >= hard_end))
            break;
    }

    uint64_t drops = 0;
    for (int i = 0; i < nsocks; i++)
        if (socks[i].stream >= 0)
            drops += sock_drops(socks[i].fd) - socks[i].drops0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double send_s = ((double)(last_send - t0) + interval_ns) / 1e9;
    double target_pps = pps * nstreams;
    uint64_t lost = sent > received ? sent - received : 0;
    printf("{\"streams\": %d, \"packets_per_stream\": %ld, \"target_pps\": %.1f, "
           "\"sent\": %llu, \"send_errors\": %llu, \"received\": %llu, \"lost\": %llu, "
           "\"loss_ratio\": %.6f, \"duplicates\": %llu, \"unknown\": %llu, "
           "\"bad_length\": %llu, \"late\": %llu, \"out_of_order\": %llu, "
           "\"latency_us\": {\"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"p999\": %.0f, "
           "\"max\": %.0f}, \"median_first_quarter_us\": %.0f, "
           "\"median_last_quarter_us\": %.0f, \"no_timestamp\": %llu, "
           "\"achieved_send_pps\": %.1f, \"late_sends_1ms\": %llu, \"max_send_lag_us\": %.0f, "
           "\"cpu_s\": %.3f, \"busy_fraction\": %.3f, \"sink_socket_drops\": %llu, \"stale_discarded\": %llu}\n",
           nstreams, npkt, target_pps, (unsigned long long)sent,
           (unsigned long long)send_errors, (unsigned long long)received,
           (unsigned long long)lost, sent ? (double)lost / (double)sent : 1.0,
           (unsigned long long)dups, (unsigned long long)unknown, (unsigned long long)badlen,
           (unsigned long long)late, (unsigned long long)ooo,
           percentile(hist, HIST_US, received, 0.50), percentile(hist, HIST_US, received, 0.90),
           percentile(hist, HIST_US, received, 0.99), percentile(hist, HIST_US, received, 0.999),
           percentile(hist, HIST_US, received, 1.0),
           qcount[0] ? percentile(qhist[0], QHIST, qcount[0], 0.5) * 100 + 50 : -1.0,
           qcount[1] ? percentile(qhist[1], QHIST, qcount[1], 0.5) * 100 + 50 : -1.0,
           (unsigned long long)no_stamp, send_s > 0 ? (double)sent / send_s : 0.0,
           (unsigned long long)late_sends, (double)max_lag / 1e3,
           cpu_s, (double)work_ns / (double)(send_end - t0), (unsigned long long)drops,
           (unsigned long long)stale);
    return 0;
}
