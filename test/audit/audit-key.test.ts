import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AUDIT_FILE, AuditError } from '../../src/audit/audit-log.ts';
import { openManagerAuditLog } from '../../src/server/audit-key.ts';
import { AUDIT_KEY_SECRET } from '../../src/server/node-config.ts';
import { createLogger } from '../../src/util/logger.ts';

/** A manager's local secrets, in memory. */
function secrets(): {
  localSecret(name: string): Buffer | undefined;
  setLocalSecrets(entries: ReadonlyMap<string, Buffer>): Promise<void>;
  map: Map<string, Buffer>;
} {
  const map = new Map<string, Buffer>();
  return {
    map,
    localSecret: (name) => map.get(name),
    setLocalSecrets: async (entries) => {
      for (const [k, v] of entries) map.set(k, Buffer.from(v));
    },
  };
}

test("a manager's first start makes its audit key and log; later starts reopen them; a deleted log stops the start until --new-audit-log", async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-key-'));
  const dir = join(root, 'audit');
  const log = createLogger({ component: 'test', level: 'silent' });
  try {
    const manager = secrets();
    const first = await openManagerAuditLog(manager, dir, 1, log);
    const key = manager.map.get(AUDIT_KEY_SECRET);
    assert.equal(key?.byteLength, 32);
    await first.append({
      identity: 'admin',
      role: 'admin',
      method: 'Secrets.Get',
      target: 'app/x',
      outcome: 'allowed',
      code: 'OK',
    });
    await first.close();
    const again = await openManagerAuditLog(manager, dir, 1, log);
    assert.deepEqual(manager.map.get(AUDIT_KEY_SECRET), key, 'the key is kept');
    assert.deepEqual(again.anchor, first.anchor);
    assert.equal((await again.verify(first.anchor)).ok, true);

    rmSync(join(dir, AUDIT_FILE));
    await assert.rejects(
      openManagerAuditLog(manager, dir, 1, log),
      (e: unknown) => e instanceof AuditError && /audit\.log is missing/.test(e.message),
    );
    const fresh = await openManagerAuditLog(manager, dir, 1, log, true);
    assert.equal(fresh.archived.length, 1, 'the head left behind is kept aside');
    assert.deepEqual(await fresh.verify(), { ok: true, records: 0, firstBroken: null });
    assert.equal((await fresh.verify(first.anchor)).ok, false, "the cluster's anchor still shows the loss");
    assert.ok(readdirSync(dir).some((name) => name.startsWith('audit.head.') && name.endsWith('.old')));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
