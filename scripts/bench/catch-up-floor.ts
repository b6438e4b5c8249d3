/**
 * The floor under a catch-up's cost to the writes on this machine: what the bare parts of any
 * catch-up by a Node process do to a cluster's write p99 while they run beside it. Two plain Node
 * processes (catch-up-floor-peer.mjs) move the secrets' names and values, and nothing else (no
 * sealing, no Raft, no gRPC), from one LevelDB to a fresh one. The serving one stands for the
 * leader: started before the timing, it reads the records in pages and streams them in chunks of
 * 1 MiB over node:http2 with mutual TLS. The pulling one stands for the new member: spawned inside
 * the timing (Node's own start is part of any Node member's catch-up), it connects, writes the
 * records in chained batches (the last synced) and reports. On two cores shared with three
 * members and a load generator, that work alone competes with the writes. The scale bench runs it
 * beside each system under the same writes as its catch-up rounds, from three members.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { cpuSeconds } from './load.ts';

const PEER = fileURLToPath(new URL('./catch-up-floor-peer.mjs', import.meta.url));
const LINE_WAIT_MS_MAX = 600_000;

/** A move started: settles when the new member's process has written every record. */
export interface FloorMove {
  readonly done: Promise<{ readonly moveMs: number; readonly cpuSeconds: number }>;
}

/** Waits for a line of `child`'s output that starts with `prefix`; its words after the prefix. */
function lineOf(child: ChildProcess, prefix: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(
      () => fail(new Error(`no "${prefix}" from the floor's ${child.spawnargs[2]}`)),
      LINE_WAIT_MS_MAX,
    );
    const fail = (error: Error): void => {
      clearTimeout(timer);
      lines.close();
      reject(error);
    };
    child.once('exit', (code) =>
      fail(new Error(`the floor's ${child.spawnargs[2]} exited (${code}) before "${prefix}"`)),
    );
    lines.on('line', (line) => {
      if (!line.startsWith(`${prefix} `) && line !== prefix) return;
      clearTimeout(timer);
      lines.close();
      resolve(line.slice(prefix.length).trim().split(' ').filter(Boolean));
    });
  });
}

function peer(args: string[]): ChildProcess {
  return spawn(process.execPath, [PEER, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
}

export class CatchUpFloor {
  readonly #dir: string;
  readonly #source: string;
  readonly secrets: number;

  private constructor(dir: string, secrets: number) {
    this.#dir = dir;
    this.#source = join(dir, 'source');
    this.secrets = secrets;
  }

  /** Writes the records the moves send (`secrets` names with 256 random bytes each) and the TLS files. */
  static async prepare(secrets: number): Promise<CatchUpFloor> {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-catch-up-floor-'));
    const nowMs = Date.now();
    const ca = createCa('bench-catch-up-floor', nowMs);
    const server = issueCertificate(ca, { id: 'receiver', role: 'manager', clusterId: 'bench-catch-up-floor', nowMs });
    const client = issueCertificate(ca, { id: 'sender', role: 'manager', clusterId: 'bench-catch-up-floor', nowMs });
    writeFileSync(join(dir, 'ca.crt'), ca.certPem);
    writeFileSync(join(dir, 'server.crt'), server.certPem);
    writeFileSync(join(dir, 'server.key'), server.keyPem, { mode: 0o600 });
    writeFileSync(join(dir, 'client.crt'), client.certPem);
    writeFileSync(join(dir, 'client.key'), client.keyPem, { mode: 0o600 });
    const floor = new CatchUpFloor(dir, secrets);
    const filler = peer(['fill', floor.#source, String(secrets)]);
    const code = await new Promise<number | null>((resolve) => filler.once('exit', (exitCode) => resolve(exitCode)));
    if (code !== 0) throw new Error(`filling the catch-up floor's LevelDB failed (${code})`);
    return floor;
  }

  /**
   * Starts the serving process (the leader's part; its start is not timed); `go()` then spawns
   * the pulling one (the new member) and times it from its spawn until it has written every
   * record. Both processes are killed by PID once the move settles, or by `stop()`.
   */
  async ready(): Promise<{ go(): FloorMove; stop(): void }> {
    const into = mkdtempSync(join(this.#dir, 'move-'));
    for (const name of ['ca.crt', 'server.crt', 'server.key', 'client.crt', 'client.key'])
      copyFileSync(join(this.#dir, name), join(into, name));
    const server = peer(['serve', this.#source, into]);
    const processes: ChildProcess[] = [server];
    let stopped = false;
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      for (const child of processes)
        if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      rmSync(into, { recursive: true, force: true });
    };
    try {
      const [port] = await lineOf(server, 'port');
      const go = (): FloorMove => {
        const serverCpuBefore = cpuSeconds(server.pid);
        const startedAt = performance.now();
        const puller = peer(['pull', into, port!]);
        processes.push(puller);
        const done = lineOf(puller, 'pulled')
          .then(([records]) => {
            const moveMs = performance.now() - startedAt;
            if (Number(records) !== this.secrets)
              throw new Error(`the floor moved ${records} records of ${this.secrets}`);
            return { moveMs, cpuSeconds: cpuSeconds(server.pid) - serverCpuBefore + cpuSeconds(puller.pid) };
          })
          .finally(stop);
        return { done };
      };
      return { go, stop };
    } catch (error) {
      stop();
      throw error;
    }
  }

  remove(): void {
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
