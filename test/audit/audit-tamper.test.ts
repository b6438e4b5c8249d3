// The tampering cases of security finding 10: each must be reported as broken (not "intact").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AUDIT_FILE, AUDIT_HEAD_FILE, AuditLog, verifyAuditDir } from '../../src/audit/audit-log.ts';

const KEY = randomBytes(32);
const event = (k: number) => ({
  identity: `user-${k}`,
  role: 'client',
  method: 'Secrets.Get',
  target: `app/k${k}`,
  outcome: 'allowed' as const,
  code: 'OK',
});

/** A manager's audit directory with `records` records, its head written. */
async function logWith(records: number): Promise<{ dir: string; root: string; log: AuditLog }> {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-tamper-'));
  const dir = join(root, 'audit');
  const log = await AuditLog.open(dir, 1, KEY, { newLog: true });
  for (let k = 0; k < records; k++) await log.append(event(k));
  await log.close();
  return { dir, root, log };
}

const linesOf = (dir: string): string[] => readFileSync(join(dir, AUDIT_FILE), 'utf8').trimEnd().split('\n');
const keepLines = (dir: string, lines: string[]): void =>
  writeFileSync(join(dir, AUDIT_FILE), lines.map((l) => `${l}\n`).join(''));

async function assertBroken(dir: string, problem: RegExp, anchor?: { seq: number; hash: string }): Promise<void> {
  const report = await verifyAuditDir(dir, KEY, anchor);
  assert.equal(report.ok, false, `reported intact: ${JSON.stringify(report)}`);
  assert.match(report.firstBroken?.problem ?? '', problem);
}

test('tamper: a truncated log whose head was deleted is not intact', async () => {
  const { dir, root } = await logWith(8);
  try {
    keepLines(dir, linesOf(dir).slice(0, 5));
    rmSync(join(dir, AUDIT_HEAD_FILE));
    await assertBroken(dir, /audit\.head is missing/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: a truncated log whose head was rewritten to match is not intact', async () => {
  const { dir, root } = await logWith(8);
  try {
    const lines = linesOf(dir).slice(0, 5);
    keepLines(dir, lines);
    const fifth = JSON.parse(lines[4]!) as { seq: number; hash: string; node: number };
    writeFileSync(join(dir, AUDIT_HEAD_FILE), JSON.stringify({ seq: fifth.seq, hash: fifth.hash }));
    await assertBroken(dir, /audit\.head/);
    // Nor does a head in the new layout pass with a MAC made without the key.
    const body = JSON.stringify({ seq: fifth.seq, hash: fifth.hash, node: fifth.node });
    const mac = createHmac('sha256', randomBytes(32)).update(`audit-head\n${body}`).digest('hex');
    writeFileSync(join(dir, AUDIT_HEAD_FILE), `${body.slice(0, -1)},"mac":"${mac}"}`);
    await assertBroken(dir, /audit\.head/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: a directory whose log and head were both deleted is not intact (nor reopened as a new log)', async () => {
  const { dir, root } = await logWith(3);
  try {
    rmSync(join(dir, AUDIT_FILE));
    rmSync(join(dir, AUDIT_HEAD_FILE));
    await assertBroken(dir, /audit\.log is missing/);
    // A restarted manager does not quietly begin a new, empty chain there.
    await assert.rejects(AuditLog.open(dir, 1, KEY), /audit\.log is missing/);
    await assertBroken(dir, /audit\.log is missing/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: an extra JSON field, reordered fields or added whitespace break the record they are in', async () => {
  const { dir, root } = await logWith(6);
  try {
    const lines = linesOf(dir);
    const variants = [
      lines[3]!.replace('"target":', '"note":"hi","target":'),
      lines[3]!.replace(/^\{("seq":\d+),("time":"[^"]*")/, '{$2,$1'),
      lines[3]!.replace('"target":', '"target": '),
    ];
    for (const variant of variants) {
      assert.notEqual(variant, lines[3]);
      keepLines(dir, [...lines.slice(0, 3), variant, ...lines.slice(4)]);
      const report = await verifyAuditDir(dir, KEY);
      assert.equal(report.ok, false, `reported intact: ${variant}`);
      assert.equal(report.firstBroken?.line, 4);
      assert.match(report.firstBroken?.problem ?? '', /altered/);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: a whole chain rewritten without the key (plain SHA-256, or HMAC under another key) is not intact', async () => {
  const { dir, root } = await logWith(5);
  try {
    const records = linesOf(dir).map((l) => JSON.parse(l) as Record<string, unknown>);
    // The unkeyed chain, as it used to be computed, with one record altered and its head to match.
    let prev = '0'.repeat(64);
    const plain = records.map((r) => {
      const target = r['seq'] === 3 ? 'app/innocent' : r['target'];
      const fields = [
        r['seq'],
        r['time'],
        r['node'],
        r['identity'],
        r['role'],
        r['method'],
        target,
        r['outcome'],
        r['code'],
      ];
      const hash = createHash('sha256').update(prev).update(JSON.stringify(fields)).digest('hex');
      const line = JSON.stringify({ ...r, target, prev, hash });
      prev = hash;
      return line;
    });
    keepLines(dir, plain);
    writeFileSync(join(dir, AUDIT_HEAD_FILE), JSON.stringify({ seq: records.length, hash: prev }));
    await assertBroken(dir, /./);
    // The keyed layout, recomputed under a key that is not the manager's.
    const other = randomBytes(32);
    prev = createHmac('sha256', other).update('audit-genesis\n1').digest('hex');
    const forged = records.map((r) => {
      const { hash: _hash, ...rest } = r;
      const body = JSON.stringify({ ...rest, target: r['seq'] === 3 ? 'app/innocent' : r['target'], prev });
      const hash = createHmac('sha256', other).update(prev).update(body).digest('hex');
      prev = hash;
      return `${body.slice(0, -1)},"hash":"${hash}"}`;
    });
    keepLines(dir, forged);
    const headBody = JSON.stringify({ seq: records.length, hash: prev, node: 1 });
    writeFileSync(
      join(dir, AUDIT_HEAD_FILE),
      `${headBody.slice(0, -1)},"mac":"${createHmac('sha256', other).update(`audit-head\n${headBody}`).digest('hex')}"}`,
    );
    await assertBroken(dir, /./);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: an older head copied back over a log truncated to it is caught by the anchor', async () => {
  const { dir, root, log } = await logWith(5);
  try {
    const oldHead = readFileSync(join(dir, AUDIT_HEAD_FILE));
    for (let k = 5; k < 8; k++) await log.append(event(k));
    await log.close();
    const lines = linesOf(dir);
    const eighth = JSON.parse(lines[7]!) as { seq: number; hash: string };
    // The anchor the cluster replicated: the manager's latest record.
    const anchor = { seq: eighth.seq, hash: eighth.hash };
    assert.equal((await verifyAuditDir(dir, KEY, anchor)).ok, true);
    keepLines(dir, lines.slice(0, 5));
    writeFileSync(join(dir, AUDIT_HEAD_FILE), oldHead);
    // Without an anchor this cut cannot be seen (the log and its old head agree): the anchor is what catches it.
    assert.equal((await verifyAuditDir(dir, KEY)).ok, true);
    await assertBroken(dir, /anchor/, anchor);
    // An anchor whose record was replaced is caught too.
    keepLines(dir, lines);
    await assertBroken(dir, /anchor/, { seq: 6, hash: eighth.hash });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: a manager does not append over a cut log (which would rewrite the head past the cut)', async () => {
  const { dir, root } = await logWith(8);
  try {
    keepLines(dir, linesOf(dir).slice(0, 5));
    await assert.rejects(AuditLog.open(dir, 1, KEY), /truncated/);
    await assertBroken(dir, /truncated/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: the first record does not follow 64 zeros but a value of the key and the node', async () => {
  const { dir, root } = await logWith(1);
  try {
    const first = JSON.parse(linesOf(dir)[0]!) as { prev: string };
    assert.notEqual(first.prev, '0'.repeat(64));
    assert.equal(first.prev, createHmac('sha256', KEY).update('audit-genesis\n1').digest('hex'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tamper: bytes that decode to the same text (invalid UTF-8 for a U+FFFD) are caught: the hash covers the bytes', async () => {
  const { dir, root, log } = await logWith(0);
  try {
    await log.append({ ...event(0), target: 'app/\uFFFD' });
    await log.close();
    const bytes = readFileSync(join(dir, AUDIT_FILE));
    const at = bytes.indexOf(Buffer.from('\uFFFD'));
    writeFileSync(
      join(dir, AUDIT_FILE),
      Buffer.concat([bytes.subarray(0, at), Buffer.from([0xff]), bytes.subarray(at + 3)]),
    );
    await assertBroken(dir, /not UTF-8/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
