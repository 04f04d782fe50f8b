#!/usr/bin/env python3
"""Plain-TCP traffic-pattern probe between two network namespaces.

Used to validate a shaped link (tc tbf/htb on a veth pair) before trusting
MPI timings measured across it: if plain TCP cannot move a pattern at wire
speed, neither can Open MPI's TCP BTL.

Run as root. The script starts itself twice, as a server inside --ns-b and a
client inside --ns-a (via `ip netns exec`), and the client prints the result.
One TCP connection is used for all repeats (as an MPI job keeps its sockets).

Patterns (sizes in MB = 10^6 bytes; "per direction" = bytes each way):
  stream    a sends --mb MB to b; timed until b's 1-byte acknowledgement.
  duplex    a and b send --mb MB to each other at the same time.
  exchange  --rounds rounds; each round is two exchanges in which both sides
            send --mb/2 MB and wait until they have the peer's --mb/2 MB
            (the reduce-scatter + all-gather of a 2-rank all-reduce of an
            --mb MB bucket). Per direction: rounds * mb.
--piece-kb K cuts every message into K KB send() calls (and recv() at most K
KB at a time) from a single-threaded non-blocking poll loop, like an MPI
progress engine; 0 = as large as possible.

Example:
  python3 Launch/bench/tcp-probe.py --ns-a nodeA --ns-b nodeB --addr-b 10.0.0.2 \
      --pattern exchange --mb 25 --rounds 20 --piece-kb 128 --repeats 3
Output: one line per repeat with the time, the wire time at --rate-gbit and
their ratio, plus the sender's TCP state (rtt, cwnd, retransmits) at the end.
"""
import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import time

BUF = 16 << 20  # bytes per send/recv buffer; content is irrelevant


BUSY = False  # --busy: spin instead of sleeping in poll(), as MPI's progress engine does


def transfer(sock, nsend, nrecv, piece, sbuf, rbuf):
    """Send nsend and receive nrecv bytes concurrently on a non-blocking socket."""
    smax = min(piece or BUF, BUF)
    rmax = min(piece or BUF, BUF)
    poller = select.poll()
    fd = sock.fileno()
    while nsend > 0 or nrecv > 0:
        # Opportunistically try both directions before sleeping in poll.
        progressed = False
        if nsend > 0:
            try:
                n = sock.send(sbuf[:min(nsend, smax)])
                nsend -= n
                progressed = True
            except BlockingIOError:
                pass
        if nrecv > 0:
            try:
                n = sock.recv_into(rbuf, min(nrecv, rmax))
                if n == 0:
                    raise ConnectionError("peer closed")
                nrecv -= n
                progressed = True
            except BlockingIOError:
                pass
        if not progressed and not BUSY:
            ev = (select.POLLOUT if nsend > 0 else 0) | (select.POLLIN if nrecv > 0 else 0)
            poller.register(fd, ev)
            poller.poll(1000)
            poller.unregister(fd)


def run_pattern(sock, args, is_client, sbuf, rbuf):
    mb = int(args.mb * 1e6)
    piece = args.piece_kb * 1024
    round_times = []
    if args.pattern == "stream":
        if is_client:
            transfer(sock, mb, 1, piece, sbuf, rbuf)
        else:
            transfer(sock, 0, mb, piece, sbuf, rbuf)
            transfer(sock, 1, 0, piece, sbuf, rbuf)
    elif args.pattern == "duplex":
        transfer(sock, mb, mb, piece, sbuf, rbuf)
    else:
        half = mb // 2
        for _ in range(args.rounds):
            t = time.perf_counter()
            transfer(sock, half, half, piece, sbuf, rbuf)
            transfer(sock, mb - half, mb - half, piece, sbuf, rbuf)
            round_times.append(time.perf_counter() - t)
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000)
    return round_times


def tcp_state(sock):
    """(rtt_ms, cwnd_pkts, total_retrans) from struct tcp_info."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    u = struct.unpack_from("24I", raw, 8)
    return u[15] / 1000.0, u[18], u[23]


def setup_socket(sock, args):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.cc:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.cc.encode())
    if args.sockbuf_kb:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sockbuf_kb * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.sockbuf_kb * 1024)


def role_main(args):
    global BUSY
    BUSY = args.busy
    sbuf = memoryview(bytearray(BUF))
    rbuf = memoryview(bytearray(BUF))
    if args.role == "server":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if args.sockbuf_kb:  # must precede listen() to affect the window scale
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.sockbuf_kb * 1024)
        ls.bind(("0.0.0.0", args.port))
        ls.listen(1)
        print("READY", flush=True)
        sock, _ = ls.accept()
        ls.close()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if args.sockbuf_kb:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.sockbuf_kb * 1024)
        sock.connect((args.addr_b, args.port))
    setup_socket(sock, args)
    sock.setblocking(False)
    cc = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
    per_dir = args.mb * 1e6 * (args.rounds if args.pattern == "exchange" else 1)
    wire = per_dir / (args.rate_gbit * 1e9 / 8)
    for rep in range(args.repeats):
        # Start handshake: client sends one byte, server echoes it.
        if args.role == "client":
            transfer(sock, 1, 1, 0, sbuf, rbuf)
        else:
            transfer(sock, 0, 1, 0, sbuf, rbuf)
            transfer(sock, 1, 0, 0, sbuf, rbuf)
        t0 = time.perf_counter()
        rounds = run_pattern(sock, args, args.role == "client", sbuf, rbuf)
        dt = time.perf_counter() - t0
        if args.role == "client":
            rtt, cwnd, retr = tcp_state(sock)
            extra = ""
            if rounds:
                r = sorted(rounds)
                extra = " round_ms min/med/max %.1f/%.1f/%.1f" % (
                    r[0] * 1e3, r[len(r) // 2] * 1e3, r[-1] * 1e3)
            print("%-8s mb=%g piece_kb=%d rep=%d cc=%s: %.3f s  wire %.3f s  x%.2f  "
                  "rtt %.2f ms cwnd %d retrans %d%s" % (
                      args.pattern, args.mb, args.piece_kb, rep, cc, dt, wire, dt / wire,
                      rtt, cwnd, retr, extra), flush=True)
    sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ns-a", help="client namespace")
    p.add_argument("--ns-b", help="server namespace")
    p.add_argument("--addr-b", required=True, help="server address (inside ns-b)")
    p.add_argument("--port", type=int, default=5299)
    p.add_argument("--pattern", choices=["stream", "duplex", "exchange"], default="stream")
    p.add_argument("--mb", type=float, default=500, help="MB per direction (exchange: bucket size)")
    p.add_argument("--rounds", type=int, default=20, help="exchange rounds (buckets)")
    p.add_argument("--piece-kb", type=int, default=0, help="send/recv piece size, 0 = max")
    p.add_argument("--gap-ms", type=float, default=0, help="idle time between exchange rounds")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rate-gbit", type=float, default=2.0, help="link rate for the wire time")
    p.add_argument("--cc", help="TCP congestion control for both sockets (e.g. cubic, bbr)")
    p.add_argument("--sockbuf-kb", type=int, default=0, help="SO_SNDBUF/SO_RCVBUF, 0 = autotune")
    p.add_argument("--busy", action="store_true",
                   help="busy-poll the socket (never sleep), like MPI ranks; shows CPU contention "
                        "between spinning processes and the kernel's packet processing")
    p.add_argument("--role", choices=["server", "client"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        return role_main(args)

    me = [sys.executable, os.path.abspath(__file__)]
    passthru = [a for a in sys.argv[1:]]
    server = subprocess.Popen(["ip", "netns", "exec", args.ns_b] + me + passthru + ["--role", "server"],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "READY":
            sys.exit("server failed to start")
        rc = subprocess.call(["ip", "netns", "exec", args.ns_a] + me + passthru + ["--role", "client"])
        server.wait(timeout=30)
        return rc or server.returncode
    finally:
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
