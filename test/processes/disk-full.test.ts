import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientError } from '../../src/client/client.ts';
import { ManagerDisks, smallDisksUnavailableBecause } from '../chaos/disks.ts';
import { ProcessCluster } from '../chaos/process-cluster.ts';
import { eventually } from './processes.ts';

test('a full disk: the manager stays up refusing requests with DISK_FULL and health says why, the others go on, nothing is lost or corrupted, and once space is freed it starts again by itself and catches up', {
  timeout: 240_000,
}, async () => {
  const why = smallDisksUnavailableBecause();
  if (why !== null) {
    // Without root the test cannot make a small filesystem; it must say why.
    assert.match(why, /root|Linux/);
    return;
  }
  const root = mkdtempSync(join(tmpdir(), 'coffer-disk-full-'));
  const small = join(root, 'm2');
  const disks = new ManagerDisks(48);
  disks.mount(small);
  let c: ProcessCluster | null = null;
  try {
    c = await ProcessCluster.start(root, 3);
    const [m1, m2] = [c.managers[0]!, c.managers[1]!];
    const writer = c.client(m1, 5000);
    for (let k = 0; k < 20; k++) await writer.put(`disk/${k}`, Buffer.from(`before-${k}`));
    const filler = disks.fill(small);
    // Writes go on through the others (a majority); the full manager stops on its first write.
    for (let k = 0; k < 200; k++) await writer.put(`disk/${k % 40}`, Buffer.from(`during-${k}`));
    const full = c.client(m2, 3000);
    const refusal = await eventually('the full manager to refuse with DISK_FULL', 30_000, async () => {
      const error = await full.get('disk/1').then(
        () => null,
        (e: unknown) => e,
      );
      return error instanceof ClientError && error.reason === 'DISK_FULL' ? error : undefined;
    });
    assert.match(refusal.message, /disk is full/);
    full.close();
    await eventually('health to say why', 10_000, async () =>
      /health: NOT_SERVING \(disk full: free space in /.test(c!.procs.log(m2.name)) ? true : undefined,
    );
    assert.ok(c.procs.running(m2.name), 'it stays up while the disk is full');
    // Space freed: it exits for its supervisor (code 75), which starts it again from disk.
    disks.free(filler);
    await eventually('the manager to exit for a restart', 20_000, async () =>
      c!.procs.running(m2.name) ? undefined : true,
    );
    assert.equal(c.procs.exitCode(m2.name), 75);
    c.restart(m2);
    await eventually('every manager at one state', 60_000, async () => {
      const all = await Promise.all(c!.managers.map((m) => c!.status(m, { withStateDigest: true })));
      return new Set(all.map((s) => s.stateDigest)).size === 1 && new Set(all.map((s) => s.appliedIndex)).size === 1
        ? true
        : undefined;
    });
    const back = c.client(m2, 5000);
    for (let k = 0; k < 40; k++) {
      const reply = await back.get(`disk/${k}`);
      const last = [...Array(200).keys()].filter((n) => n % 40 === k).at(-1)!;
      assert.equal(reply.value.toString(), `during-${last}`);
    }
    back.close();
    writer.close();
  } finally {
    await c?.stop();
    disks.unmountAll();
    rmSync(root, { recursive: true, force: true });
  }
});
