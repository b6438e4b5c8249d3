// `coffer audit verify --data/--dir`, offline: the key comes from the manager's key store (no
// manager is started here: a key store and an audit log are made directly).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AUDIT_FILE, AuditLog } from '../../src/audit/audit-log.ts';
import { Manager } from '../../src/manager/manager.ts';
import { AUDIT_KEY_SECRET } from '../../src/server/node-config.ts';
import { coffer } from '../processes/processes.ts';

async function managerWithLog(
  root: string,
  name: string,
  autolock: boolean,
): Promise<{ data: string; unlockKey: string | null; anchor: { seq: number; hash: string } }> {
  const data = join(root, name);
  const key = randomBytes(32);
  const { unlockKey } = await Manager.init(data, {
    ...(autolock ? { autolock: true } : { keyFile: `${data}.key` }),
    secrets: new Map([[AUDIT_KEY_SECRET, key]]),
  });
  const log = await AuditLog.open(join(data, 'audit'), 1, key, { newLog: true });
  for (let k = 0; k < 3; k++)
    await log.append({
      identity: 'admin',
      role: 'admin',
      method: 'Secrets.Get',
      target: `app/k${k}`,
      outcome: k === 1 ? 'denied' : 'allowed',
      code: 'OK',
    });
  await log.close();
  return { data, unlockKey, anchor: log.anchor };
}

test("audit verify --data reads the audit key from a stopped manager's key store (key file or unlock key); --dir checks a copy with it", {
  timeout: 90_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-verify-'));
  try {
    const plain = await managerWithLog(root, 'm1', false);
    let r = await coffer(['audit', 'verify', '--data', plain.data]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /audit log intact: 3 records/);

    // A copy, tampered: found with the key of --data.
    const copy = join(root, 'copy');
    cpSync(join(plain.data, 'audit'), copy, { recursive: true });
    writeFileSync(
      join(copy, AUDIT_FILE),
      readFileSync(join(copy, AUDIT_FILE), 'utf8').replace('"outcome":"denied"', '"outcome":"allowed"'),
    );
    r = await coffer([
      'audit',
      'verify',
      '--dir',
      copy,
      '--data',
      plain.data,
      '--anchor',
      `${plain.anchor.seq}:${plain.anchor.hash}`,
    ]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /audit log broken at line 2: its contents were altered/);
    // Without the key it is not reported intact: it is refused.
    r = await coffer(['audit', 'verify', '--dir', copy]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--dir needs --data/);
    // Another key file does not open it.
    writeFileSync(join(root, 'other.key'), randomBytes(32), { mode: 0o600 });
    r = await coffer(['audit', 'verify', '--data', plain.data, '--key-file', join(root, 'other.key')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /key file does not open/);

    // An autolocked manager: its unlock key opens the key store, read-only.
    const locked = await managerWithLog(root, 'm2', true);
    writeFileSync(join(root, 'unlock'), `${locked.unlockKey}\n`, { mode: 0o600 });
    r = await coffer([
      'audit',
      'verify',
      '--data',
      locked.data,
      '--unlock-key-file',
      join(root, 'unlock'),
      '--anchor',
      `5:${locked.anchor.hash}`,
      '--output',
      'json',
    ]);
    assert.equal(r.code, 3, r.stderr);
    const report = JSON.parse(r.stdout) as { ok: boolean; problem: string };
    assert.equal(report.ok, false);
    assert.match(report.problem, /anchor is record 5/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
