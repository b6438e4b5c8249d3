import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let runs = 0;

/**
 * One network namespace per manager, each joined by a veth pair to a bridge in the harness's own
 * namespace, on a private /24 (10.201.X.0/24) that only these namespaces use. The harness (and the
 * workload's clients) reach every manager through the bridge; partitions are blackhole routes
 * inside the namespaces, so a cut link silently drops packets as a real partition does (no
 * connection refused, no reset). Names carry the harness's PID: namespaces left by a harness
 * that died are found and removed by the next one.
 */
export class NetworkNamespaces {
  readonly #tag: string;
  readonly #subnet: string;
  readonly #size: number;
  #destroyed = false;

  private constructor(tag: string, subnet: string, size: number) {
    this.#tag = tag;
    this.#subnet = subnet;
    this.#size = size;
  }

  /** Null when namespaces can be made here; otherwise why not. */
  static unavailableBecause(): string | null {
    if (process.platform !== 'linux') return 'not Linux';
    if (process.getuid?.() !== 0) return 'not root (network namespaces need CAP_NET_ADMIN)';
    const probe = `cfprobe${process.pid}`;
    try {
      ip(['netns', 'add', probe]);
      ip(['netns', 'del', probe]);
      return null;
    } catch (error) {
      return `ip netns failed: ${(error as { stderr?: Buffer }).stderr?.toString().trim() ?? String(error)}`;
    }
  }

  /** Null when links can go through proxies (proxyLinks needs nft); otherwise why not. */
  static linkProxiesUnavailableBecause(): string | null {
    try {
      execFileSync('nft', ['--version'], { stdio: 'ignore' });
      return null;
    } catch {
      return 'nft (Debian package nftables) is not installed';
    }
  }

  /** Removes namespaces and bridges of harnesses that are no longer running. */
  static sweepStale(): string[] {
    const removed: string[] = [];
    const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((line) => line.split(' ')[0]!);
    for (const name of names) {
      const m = /^cf(\d+)[a-z]-m\d+$/.exec(name);
      if (m !== null && !alive(Number(m[1]))) {
        ip(['netns', 'del', name]);
        removed.push(name);
      }
    }
    const links = execFileSync('ip', ['-o', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }).split('\n');
    for (const line of links) {
      const m = /^\d+: (cfb(\d+)[a-z]):/.exec(line);
      if (m !== null && !alive(Number(m[2]))) {
        ip(['link', 'del', m[1]!]);
        removed.push(m[1]!);
      }
    }
    return removed;
  }

  static create(size: number): NetworkNamespaces {
    NetworkNamespaces.sweepStale();
    const tag = `${process.pid}${String.fromCharCode(97 + (runs++ % 26))}`;
    const routes = execFileSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
    let third = 1 + (process.pid % 250);
    while (routes.includes(`10.201.${third}.`)) third = 1 + ((third + 1) % 250);
    const net = new NetworkNamespaces(tag, `10.201.${third}`, size);
    try {
      const bridge = net.#bridge();
      ip(['link', 'add', bridge, 'type', 'bridge']);
      ip(['addr', 'add', `${net.#subnet}.1/24`, 'dev', bridge]);
      ip(['link', 'set', bridge, 'up']);
      for (let k = 0; k < size; k++) {
        const ns = net.namespace(k);
        const host = `cf${tag}h${k}`;
        const inside = `cf${tag}n${k}`;
        ip(['netns', 'add', ns]);
        ip(['link', 'add', host, 'type', 'veth', 'peer', 'name', inside]);
        ip(['link', 'set', inside, 'netns', ns]);
        ip(['link', 'set', host, 'master', bridge, 'up']);
        ip(['-n', ns, 'link', 'set', inside, 'name', 'eth0']);
        ip(['-n', ns, 'addr', 'add', `${net.host(k)}/24`, 'dev', 'eth0']);
        ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
        ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      }
    } catch (error) {
      net.destroy();
      throw error;
    }
    return net;
  }

  get size(): number {
    return this.#size;
  }

  #bridge(): string {
    return `cfb${this.#tag}`;
  }

  namespace(k: number): string {
    return `cf${this.#tag}-m${k + 1}`;
  }

  /** Manager k's address on the bridge. */
  host(k: number): string {
    return `${this.#subnet}.${11 + k}`;
  }

  /**
   * The address that stands for manager `to` to manager `from` once links go through proxies
   * (see proxyLinks): on the bridge, in the harness's namespace.
   */
  linkAddress(from: number, to: number): string {
    return `${this.#subnet}.${100 + from * 10 + to}`;
  }

  /**
   * Sends what each manager addresses to another (TCP to `port`) to that link's own address on
   * the bridge instead (a DNAT rule in the sender's namespace), where a LinkProxies listens.
   * Partitions keep working: a cut link drops the link's address as well as the manager's.
   */
  proxyLinks(port: number): void {
    if (this.#size > 10) throw new Error('link addresses are laid out for at most 10 managers');
    for (let from = 0; from < this.#size; from++) {
      const rules: string[] = [];
      for (let to = 0; to < this.#size; to++) {
        if (from === to) continue;
        ip(['addr', 'add', `${this.linkAddress(from, to)}/32`, 'dev', this.#bridge()]);
        rules.push(`ip daddr ${this.host(to)} tcp dport ${port} dnat to ${this.linkAddress(from, to)}`);
      }
      const ruleset = [
        'table ip coffer_links {',
        '  chain out {',
        '    type nat hook output priority -100; policy accept;',
        ...rules.map((r) => `    ${r}`),
        '  }',
        '}',
        '',
      ].join('\n');
      execFileSync('ip', ['netns', 'exec', this.namespace(from), 'nft', '-f', '-'], {
        input: ruleset,
        stdio: ['pipe', 'ignore', 'pipe'],
      });
    }
  }

  /** The command prefix that runs a program inside manager k's namespace (same PID: ip execs). */
  prefix(k: number): string[] {
    return ['ip', 'netns', 'exec', this.namespace(k)];
  }

  /** Manager `from` can no longer send to manager `to` (TCP between them fails both ways). */
  async cut(from: number, to: number): Promise<void> {
    for (const address of [this.host(to), this.linkAddress(from, to)])
      await run('ip', ['-n', this.namespace(from), 'route', 'replace', 'blackhole', `${address}/32`]);
  }

  /** No traffic between the groups; inside each group, and to the harness, traffic flows. */
  async partition(groups: ReadonlyArray<readonly number[]>): Promise<void> {
    for (const a of groups)
      for (const b of groups) if (a !== b) for (const x of a) for (const y of b) await this.cut(x, y);
  }

  /** Every cut link restored. */
  async heal(): Promise<void> {
    for (let k = 0; k < this.#size; k++)
      await run('ip', ['-n', this.namespace(k), 'route', 'flush', 'type', 'blackhole']);
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (let k = 0; k < this.#size; k++) {
      try {
        ip(['netns', 'del', this.namespace(k)]);
      } catch {
        // not made (creation failed part way)
      }
    }
    try {
      ip(['link', 'del', this.#bridge()]);
    } catch {
      // not made
    }
  }
}
