#!/usr/bin/env python3
"""Traversal matrix: how often, how fast and at what cost two fresh natchat clients get a
direct path, per pair class, on the NAT testbed (needs root; run through bin/bench-traversal).

For each class (a pair of sides: a testbed NAT kind, or `public` for no NAT) one testbed is
built with the server and one host per side. Each try flushes the NATs' conntrack tables
(fresh mappings, no stray entries from the last try), starts two clients with fresh IDs,
lets each @chat the other once, and records:
  direct     both clients printed a direct (or private) path line within --bound seconds
  time       seconds from the first @chat to the later of the two sides' first direct path
             lines (the shell prints the line as the path is selected, i.e. when the first
             verified check came back twice), from the clients' timestamped stdout
  probes     ports the easy (cone) side probed, from its log (`probing ...: answered after
             N probes` / `no answer after N probes`, --log-level info; every attempt of the
             try summed), 0 when nothing was probed
  sweeps     checks the hard (symmetric) side sent from its probe sockets, likewise
  path       the path lines as printed (`direct (probed) ...`, `direct ...`, `relayed`)
It prints a table (success rate, median and p90 time, median probes) and writes JSON.

Classes are data: one line in CLASSES each, e.g.
    ('mapped_symmetric-cone', 'symmetric+map', 'cone', 15.0),
where the two middle fields are sides: a testbed NAT kind (Tests/testbed/testbed.py NAT_KINDS)
or 'public', optionally with '+map' (the home router runs miniupnpd, serving PCP) and/or
'@cgn' (the home router sits behind a carrier-grade NAT, a 'cone' on 100.64.0.0/10); the
last field is the bound in seconds for that class.

Every wait is bounded; every process is started through the Testbed, which kills it by PID
when the class is done (also on failure or Ctrl-C). Traffic stays between the testbed's
namespaces (203.0.113.0/24 public segment).
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'e2e'))

import test_nat_support as S  # noqa: E402
from testbed import Testbed, require_root  # noqa: E402

# (name, side x, side y, bound in seconds): sides are testbed NAT kinds or 'public'.
CLASSES = [
    ('cone-cone', 'cone', 'cone', 15.0),
    ('cone-cone_open', 'cone', 'cone_open', 15.0),
    ('cone_open-cone_open', 'cone_open', 'cone_open', 15.0),
    ('symmetric-cone', 'symmetric', 'cone', 30.0),
    ('symmetric-cone_open', 'symmetric', 'cone_open', 30.0),
    ('symmetric-symmetric', 'symmetric', 'symmetric', 10.0),
    ('public-symmetric', 'public', 'symmetric', 15.0),
    ('mapped_symmetric-cone', 'symmetric+map', 'cone', 15.0),
    ('mapped_symmetric-symmetric', 'symmetric+map', 'symmetric', 15.0),
    ('cgn_cone-cone', 'cone@cgn', 'cone', 15.0),
]
SMOKE_CLASSES = ['cone-cone', 'symmetric-cone']

LAN = {'x': '192.168.1.2', 'y': '192.168.2.2'}
PUBLIC_IP = {'x': '203.0.113.31', 'y': '203.0.113.32'}
PROBES = re.compile(r'probing \S+: (?:answered after|no answer after) (\d+) probes')


def topology(side_x, side_y):
    nats, hosts, public = {}, {}, {'srv': S.SERVER_IP}
    for tag, side in (('x', side_x), ('y', side_y)):
        host = tag + '1'
        if side == 'public':
            public[host] = PUBLIC_IP[tag]
            continue
        cgn = side.endswith('@cgn')
        side = side.removesuffix('@cgn')
        mapped = side.endswith('+map')
        kind = side.removesuffix('+map')
        spec = {'kind': kind}
        if mapped:
            spec['miniupnpd'] = ['pcp']
        if cgn:
            carrier = 'G' + tag.upper()
            nats[carrier] = 'cone'
            spec['upstream'] = carrier
        nats[tag.upper()] = spec if len(spec) > 1 else kind
        hosts[host] = (tag.upper(), LAN[tag])
    return nats, hosts, public


def log_text(tb, client):
    try:
        return tb.read_log(client.proc)
    except OSError:
        return ''


def one_try(tb, n, bound, verbose):
    for nat in tb_nats(tb):
        tb.flush_conntrack(nat)
    ids = {'x1': f'x{n}', 'y1': f'y{n}'}
    clients = {h: S.Client(tb, h, cid=cid, extra=('--log-level', 'info')) for h, cid in ids.items()}
    try:
        for h, c in clients.items():
            other = ids['y1' if h == 'x1' else 'x1']
            if (c.wait_registered(15.0) is None or c.wait_nat(15.0) is None
                    or c.wait(r'\* ' + re.escape(other) + r' joined \(.*', 15.0) is None):
                return {'try': n, 'error': f'{h} did not come up', 'direct': False}
        time.sleep(1.0)     # the NAT kinds reach the server with the next keep-alive
        marks = {h: c.mark() for h, c in clients.items()}
        t0 = clients['x1'].chat(ids['y1'], f'hello {n}')
        clients['y1'].chat(ids['x1'], f'hello {n}')
        firsts = {}
        for h, c in clients.items():
            other = ids['y1' if h == 'x1' else 'x1']
            hit = c.wait(r'\* path to ' + re.escape(other) + r': (direct|private) .*',
                         max(0.1, t0 + bound - time.monotonic()), since=marks[h])
            firsts[h] = hit
        direct = all(firsts.values())
        paths = {h: (hit[2].split(': ', 1)[1] if hit else 'relayed') for h, hit in firsts.items()}
        seconds = round(max(hit[1] for hit in firsts.values()) - t0, 3) if direct else None
        probes = sweeps = 0
        for c in clients.values():
            text = log_text(tb, c)
            counted = sum(int(m.group(1)) for m in PROBES.finditer(text))
            if 'sockets towards' in text:
                sweeps += counted
            else:
                probes += counted
        row = {'try': n, 'direct': direct, 'time_s': seconds, 'probes': probes, 'sweeps': sweeps, 'paths': paths}
        if verbose:
            print(f'    try {n}: {row}', file=sys.stderr)
        return row
    finally:
        for c in clients.values():
            tb.stop(c.proc)


def tb_nats(tb):
    return list(tb.nat_spec)


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def run_class(name, side_x, side_y, bound, tries, verbose):
    nats, hosts, public = topology(side_x, side_y)
    rows = []
    with Testbed(nats=nats, hosts=hosts, public_hosts=public) as tb:
        server = S.Server(tb)
        try:
            for n in range(1, tries + 1):
                rows.append(one_try(tb, n, bound, verbose))
        finally:
            tb.stop(server.proc)
    times = [r['time_s'] for r in rows if r.get('time_s') is not None]
    probes = [r['probes'] for r in rows if 'probes' in r]
    sweeps = [r['sweeps'] for r in rows if 'sweeps' in r]
    return {
        'class': name, 'sides': [side_x, side_y], 'bound_s': bound, 'tries': len(rows),
        'direct': sum(1 for r in rows if r['direct']),
        'success_rate': round(sum(1 for r in rows if r['direct']) / max(1, len(rows)), 3),
        'median_time_s': statistics.median(times) if times else None,
        'p90_time_s': percentile(times, 0.9),
        'median_probes': statistics.median(probes) if probes else None,
        'median_sweeps': statistics.median(sweeps) if sweeps else None,
        'rows': rows,
    }


def fmt(x, nd=2):
    return '-' if x is None else (f'{x:.{nd}f}' if isinstance(x, float) else str(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tries', type=int, default=20, help='tries per class (default 20)')
    parser.add_argument('--classes', default=None,
                        help='comma-separated class names (default: all): ' + ', '.join(c[0] for c in CLASSES))
    parser.add_argument('--smoke', action='store_true', help='2 tries of ' + ' and '.join(SMOKE_CLASSES))
    parser.add_argument('--json', default='/tmp/natchat-traversal.json', help='where to write the results')
    parser.add_argument('--verbose', action='store_true', help='print every try')
    args = parser.parse_args(argv)
    require_root()
    wanted = SMOKE_CLASSES if args.smoke else (args.classes.split(',') if args.classes else [c[0] for c in CLASSES])
    tries = 2 if args.smoke else max(1, args.tries)
    known = {c[0]: c for c in CLASSES}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        parser.error(f'unknown classes {unknown}; known: {sorted(known)}')
    results = []
    started = time.monotonic()
    for name in wanted:
        _, side_x, side_y, bound = known[name]
        print(f'{name}: {tries} tries ...', file=sys.stderr)
        results.append(run_class(name, side_x, side_y, bound, tries, args.verbose))
        r = results[-1]
        print(f'  {r["direct"]}/{r["tries"]} direct, median {fmt(r["median_time_s"])} s', file=sys.stderr)
    header = (f'{"class":<22} {"tries":>5} {"direct":>7} {"rate":>6} {"median s":>9} {"p90 s":>7} {"probes":>7} '
              f'{"sweeps":>7}')
    print(header)
    print('-' * len(header))
    for r in results:
        print(f'{r["class"]:<22} {r["tries"]:>5} {r["direct"]:>7} {r["success_rate"] * 100:>5.0f}% '
              f'{fmt(r["median_time_s"]):>9} {fmt(r["p90_time_s"]):>7} {fmt(r["median_probes"], 0):>7} '
              f'{fmt(r["median_sweeps"], 0):>7}')
    with open(args.json, 'w') as f:
        json.dump({'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                   'seconds': round(time.monotonic() - started, 1), 'classes': results}, f, indent=2)
    print(f'(JSON: {args.json})')
    return 0 if all(r['tries'] for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
