import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AUDIT_FILE,
  AUDIT_HEAD_FILE,
  AUDIT_LINE_BYTES_MAX,
  AuditError,
  AuditLog,
  HEAD_INTERVAL_MS,
  scanBackward,
  verifyAuditDir,
} from '../../src/audit/audit-log.ts';

const KEY = randomBytes(32);
const event = (k: number) => ({
  identity: `user-${k}`,
  role: 'client',
  method: 'Secrets.Get',
  target: `app/k${k}`,
  outcome: 'allowed' as const,
  code: 'OK',
});

async function logWith(records: number): Promise<{ dir: string; root: string }> {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-'));
  const dir = join(root, 'audit');
  const log = await AuditLog.open(dir, 1, KEY, { newLog: true });
  await Promise.all(Array.from({ length: records }, (_, k) => log.append(event(k))));
  await log.close(); // the head is written after the records are answered
  return { dir, root };
}

test('records chain: a whole log verifies, and a reopened log continues the chain', async () => {
  const { dir, root } = await logWith(10);
  try {
    assert.deepEqual(await verifyAuditDir(dir, KEY), { ok: true, records: 10, firstBroken: null });
    const again = await AuditLog.open(dir, 1, KEY);
    await again.append(event(10));
    await again.close();
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, true);
    assert.equal(report.records, 11);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('verify reports the first broken link of an altered, reordered, cut or truncated log', async () => {
  const { dir, root } = await logWith(8);
  const path = join(dir, AUDIT_FILE);
  const original = readFileSync(path, 'utf8');
  const lines = original.trimEnd().split('\n');
  const check = async (text: string, line: number, problem: RegExp) => {
    writeFileSync(path, text);
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, false);
    assert.equal(report.firstBroken?.line, line);
    assert.match(report.firstBroken?.problem ?? '', problem);
  };
  try {
    await check(original.replace('"target":"app/k4"', '"target":"app/kX"'), 5, /altered/);
    await check(
      [lines[0], lines[2], lines[1], ...lines.slice(3)].join('\n') + '\n',
      2,
      /removed, inserted or reordered/,
    );
    await check([...lines.slice(0, 3), ...lines.slice(4)].join('\n') + '\n', 4, /removed, inserted or reordered/);
    await check(lines.slice(0, 6).join('\n') + '\n', 7, /truncated/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('when the log cannot be written, appends fail and the log says it is broken; it recovers once it can write', async () => {
  const { dir, root } = await logWith(3);
  try {
    const log = await AuditLog.open(dir, 1, KEY);
    await log.append(event(3)); // the log's file is open from here on
    await log.settled(); // and its head written
    renameSync(dir, `${dir}.away`);
    writeFileSync(dir, 'not a directory');
    await assert.rejects(
      log.append(event(4)),
      (e: unknown) => e instanceof AuditError && /cannot be written/.test(e.message),
    );
    assert.notEqual(log.broken, null);
    assert.equal(
      readFileSync(join(`${dir}.away`, AUDIT_FILE), 'utf8')
        .trimEnd()
        .split('\n').length,
      4,
      'the refused record was cut off the file it went to',
    );
    rmSync(dir);
    renameSync(`${dir}.away`, dir);
    await log.append(event(5));
    assert.equal(log.broken, null);
    await log.close();
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, true, JSON.stringify(report));
    assert.equal(report.records, 5, 'the failed record was never written; the chain goes on from the last durable one');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a log file moved away, removed or replaced while open takes no more records: the batch fails, and nothing of it stays in the moved file', async () => {
  for (const how of ['moved', 'removed', 'replaced'] as const) {
    const { dir, root } = await logWith(3);
    try {
      const log = await AuditLog.open(dir, 1, KEY);
      await log.append(event(3));
      const aside = join(root, 'aside.log');
      if (how === 'removed') rmSync(join(dir, AUDIT_FILE));
      else renameSync(join(dir, AUDIT_FILE), aside);
      // Replaced: a copy of it put at its path (the same records; another file).
      if (how === 'replaced') writeFileSync(join(dir, AUDIT_FILE), readFileSync(aside));
      await assert.rejects(
        log.append(event(4)),
        (e: unknown) => e instanceof AuditError && /cannot be written/.test(e.message),
        `${how}: the record is refused, not written where nobody looks`,
      );
      assert.notEqual(log.broken, null);
      if (how !== 'removed')
        assert.equal(readFileSync(aside, 'utf8').trimEnd().split('\n').length, 4, 'the moved file ends at record 4');
      // What the path names is written from the next batch on (a new file: the chain there shows the gap).
      await log.append(event(5));
      assert.equal(log.broken, null);
      await log.close();
      const report = await verifyAuditDir(dir, KEY);
      if (how === 'replaced') assert.equal(report.records, 5, 'the copy goes on from the last durable record');
      else assert.equal(report.ok, false, `${how}: the log at the path does not verify without its first records`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
});

test('a crash between the log and its head, or in the middle of a line, leaves a log that reopens and still verifies', async () => {
  const { dir, root } = await logWith(4);
  try {
    // The head lags one record behind the log (crash before the head was replaced).
    const lagging = readFileSync(join(dir, AUDIT_HEAD_FILE));
    const more = await AuditLog.open(dir, 1, KEY);
    await more.append(event(4));
    await more.close();
    writeFileSync(join(dir, AUDIT_HEAD_FILE), lagging);
    const lines = readFileSync(join(dir, AUDIT_FILE), 'utf8').trimEnd().split('\n');
    // And a partial line at the end (crash mid-write).
    writeFileSync(join(dir, AUDIT_FILE), `${lines.join('\n')}\n{"seq":6,"ti`);
    assert.match(
      (await verifyAuditDir(dir, KEY)).firstBroken?.problem ?? '',
      /incomplete last line/,
      'offline, before the manager cuts it',
    );
    const log = await AuditLog.open(dir, 1, KEY);
    await log.append(event(5));
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, true, JSON.stringify(report));
    assert.equal(report.records, 6);
    // Its head is rewritten on a timer: let it land before the directory is removed.
    await log.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('while the head cannot be written the log stays broken, even as records still append; it recovers by itself', async () => {
  const { dir, root } = await logWith(2);
  try {
    const log = await AuditLog.open(dir, 1, KEY);
    // The head is replaced through audit.head.tmp: a directory there makes every head write fail
    // while the log itself can still be appended to.
    mkdirSync(join(dir, `${AUDIT_HEAD_FILE}.tmp`));
    await log.append(event(2));
    await log.settled();
    assert.notEqual(log.broken, null, 'a head that cannot be written breaks the log');
    await log.append(event(3)); // a refused request's own record still goes in
    await new Promise((resolve) => setTimeout(resolve, HEAD_INTERVAL_MS + 50));
    assert.notEqual(log.broken, null, 'a record appended meanwhile does not lift it');
    rmSync(join(dir, `${AUDIT_HEAD_FILE}.tmp`), { recursive: true });
    const deadline = Date.now() + 10 * HEAD_INTERVAL_MS;
    while (log.broken !== null && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(log.broken, null, 'the head is retried until it can be written');
    const head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), 'utf8')) as { seq: number };
    assert.equal(head.seq, 4);
    assert.equal((await verifyAuditDir(dir, KEY)).ok, true);
    await log.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the layout: each line is a record's JSON with its hash last; the head carries seq, hash, node, the log's length through that record, and its MAC last; the anchor is the last durable record", async () => {
  const { dir, root } = await logWith(2);
  try {
    const lines = readFileSync(join(dir, AUDIT_FILE), 'utf8').trimEnd().split('\n');
    for (const line of lines) {
      const record = JSON.parse(line) as Record<string, unknown>;
      assert.deepEqual(Object.keys(record), [
        'seq',
        'time',
        'node',
        'identity',
        'role',
        'method',
        'target',
        'outcome',
        'code',
        'prev',
        'hash',
      ]);
      assert.match(line, /,"hash":"[0-9a-f]{64}"\}$/);
    }
    const head = readFileSync(join(dir, AUDIT_HEAD_FILE), 'utf8');
    assert.match(head, /^\{"seq":2,"hash":"[0-9a-f]{64}","node":1,"bytes":\d+,"mac":"[0-9a-f]{64}"\}$/);
    // The head's bytes: the log's length through the record it names (here the last).
    assert.equal((JSON.parse(head) as { bytes: number }).bytes, readFileSync(join(dir, AUDIT_FILE)).length);
    const log = await AuditLog.open(dir, 1, KEY);
    assert.deepEqual(log.anchor, { seq: 2, hash: (JSON.parse(lines[1]!) as { hash: string }).hash });
    assert.equal((await log.verify(log.anchor)).ok, true);
    // Under another key nothing verifies, and the log is not opened.
    const other = randomBytes(32);
    assert.match((await verifyAuditDir(dir, other)).firstBroken?.problem ?? '', /MAC/);
    await assert.rejects(
      AuditLog.open(dir, 1, other),
      (e: unknown) => e instanceof AuditError && /does not verify/.test(e.message),
    );
    await log.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a new log moves what was there aside (an older, unkeyed log; or one whose key is gone) and starts a verified chain', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-'));
  const dir = join(root, 'audit');
  try {
    mkdirSync(dir);
    writeFileSync(join(dir, AUDIT_FILE), '{"identity":"a","seq":1,"prev":"0","hash":"1"}\n');
    writeFileSync(join(dir, AUDIT_HEAD_FILE), '{"seq":1,"hash":"1"}');
    const log = await AuditLog.open(dir, 3, KEY, { newLog: true });
    assert.equal(log.archived.length, 2);
    assert.match(readFileSync(join(dir, log.archived[0]!), 'utf8'), /"identity":"a"/);
    assert.deepEqual(await verifyAuditDir(dir, KEY), { ok: true, records: 0, firstBroken: null });
    await log.append(event(1));
    await log.close();
    assert.deepEqual(await verifyAuditDir(dir, KEY), { ok: true, records: 1, firstBroken: null });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** The head as a manager before 2026-12 wrote it: no byte count, under the same MAC. */
function headWithoutBytes(dir: string): void {
  const head = JSON.parse(readFileSync(join(dir, AUDIT_HEAD_FILE), 'utf8')) as {
    seq: number;
    hash: string;
    node: number;
  };
  const body = JSON.stringify({ seq: head.seq, hash: head.hash, node: head.node });
  const mac = createHmac('sha256', KEY).update('audit-head\n').update(body).digest('hex');
  writeFileSync(join(dir, AUDIT_HEAD_FILE), `${body.slice(0, -1)},"mac":"${mac}"}`);
}

/** Rewrites record `seq`'s identity (same length) without its hash: an alteration only the chain shows. */
function alterRecord(dir: string, seq: number): void {
  const lines = readFileSync(join(dir, AUDIT_FILE), 'utf8').split('\n');
  lines[seq - 1] = lines[seq - 1]!.replace('"identity":"user-', '"identity":"usXr-');
  writeFileSync(join(dir, AUDIT_FILE), lines.join('\n'));
}

test("a start checks the log from its head's record on, so it takes the same time however long the log is; verify checks it whole", async () => {
  const { dir, root } = await logWith(40);
  try {
    // A record altered before the head's: a start does not read it (it was checked when written)...
    alterRecord(dir, 10);
    const log = await AuditLog.open(dir, 1, KEY);
    await log.append(event(40));
    await log.close();
    // ...and the whole check finds it, at its line.
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, false);
    assert.equal(report.firstBroken?.line, 10);
    assert.match(report.firstBroken?.problem ?? '', /altered/);
    assert.equal((await log.verify()).firstBroken?.line, 10);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("a start refuses a log whose head's record, or any record after it, was altered, and one cut short of its head", async () => {
  for (const damage of ['head record', 'after the head', 'cut'] as const) {
    const { dir, root } = await logWith(12);
    try {
      const head = readFileSync(join(dir, AUDIT_HEAD_FILE));
      // Two more records past the head (a crash before the head caught up).
      const more = await AuditLog.open(dir, 1, KEY);
      await more.append(event(12));
      await more.append(event(13));
      await more.close();
      writeFileSync(join(dir, AUDIT_HEAD_FILE), head);
      if (damage === 'head record') alterRecord(dir, 12);
      if (damage === 'after the head') alterRecord(dir, 14);
      if (damage === 'cut') {
        const lines = readFileSync(join(dir, AUDIT_FILE), 'utf8').trimEnd().split('\n');
        writeFileSync(
          join(dir, AUDIT_FILE),
          lines
            .slice(0, 11)
            .map((l) => `${l}\n`)
            .join(''),
        );
      }
      await assert.rejects(
        AuditLog.open(dir, 1, KEY),
        (e: unknown) =>
          e instanceof AuditError &&
          (damage === 'cut' ? /truncated/ : damage === 'head record' ? /head names/ : /altered/).test(e.message),
        damage,
      );
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
});

test("a head without the log's length (an older manager's) gets the whole check once; the next head carries it", async () => {
  const { dir, root } = await logWith(6);
  try {
    headWithoutBytes(dir);
    alterRecord(dir, 2);
    await assert.rejects(AuditLog.open(dir, 1, KEY), /does not verify \(at line 2/);
    alterRecord(dir, 2); // app/X back... not: restore the record from scratch instead
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  const fresh = await logWith(6);
  try {
    headWithoutBytes(fresh.dir);
    const log = await AuditLog.open(fresh.dir, 1, KEY);
    await log.append(event(6));
    await log.close();
    const head = JSON.parse(readFileSync(join(fresh.dir, AUDIT_HEAD_FILE), 'utf8')) as { seq: number; bytes: number };
    assert.deepEqual(head.seq, 7);
    assert.equal(head.bytes, readFileSync(join(fresh.dir, AUDIT_FILE)).length);
    assert.equal((await verifyAuditDir(fresh.dir, KEY)).ok, true);
  } finally {
    rmSync(fresh.root, { recursive: true, force: true });
  }
});

test('a log longer than a read is checked across the reads, and its last records read back across them', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-'));
  const dir = join(root, 'audit');
  try {
    const log = await AuditLog.open(dir, 1, KEY, { newLog: true });
    // About 2.3 MiB of records, with names that make lines of different lengths, some multi-byte.
    const long = (k: number) => ({ ...event(k), target: `app/${'\u00e9'.repeat(k % 50)}${'x'.repeat(k % 300)}k${k}` });
    for (let k = 0; k < 8000; k += 500)
      await Promise.all(Array.from({ length: 500 }, (_, j) => log.append(long(k + j))));
    await log.close();
    assert.ok(readFileSync(join(dir, AUDIT_FILE)).length > 2 * 1024 * 1024);
    assert.deepEqual(await verifyAuditDir(dir, KEY), { ok: true, records: 8000, firstBroken: null });
    const last = await log.tail(700);
    assert.deepEqual(
      last.map((r) => r.seq),
      Array.from({ length: 700 }, (_, k) => 7301 + k),
    );
    assert.equal(last[699]!.target, long(7999).target);
    // A record altered past the first read is found at its own line.
    alterRecord(dir, 6000);
    assert.equal((await verifyAuditDir(dir, KEY)).firstBroken?.line, 6000);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a torn last line does not hide a cut: a log cut short of its head and left with half a line is refused, whatever its head', async () => {
  for (const head of ['with its length', 'without it'] as const) {
    const { dir, root } = await logWith(10);
    try {
      if (head === 'without it') headWithoutBytes(dir);
      const lines = readFileSync(join(dir, AUDIT_FILE), 'utf8').trimEnd().split('\n');
      writeFileSync(join(dir, AUDIT_FILE), `${lines.slice(0, 7).join('\n')}\n${lines[7]!.slice(0, 40)}`);
      await assert.rejects(AuditLog.open(dir, 1, KEY), /truncated/, head);
      assert.match((await verifyAuditDir(dir, KEY)).firstBroken?.problem ?? '', /truncated/, head);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
});

test('bytes without a line end, more than a record can be, are reported where they start: not read whole, nor cut off at a start as a torn line', async () => {
  const { dir, root } = await logWith(5);
  const path = join(dir, AUDIT_FILE);
  try {
    const log = await AuditLog.open(dir, 1, KEY);
    appendFileSync(path, 'x'.repeat(AUDIT_LINE_BYTES_MAX * 3));
    await assert.rejects(log.tail(3), (error: unknown) => {
      assert.ok(error instanceof AuditError);
      assert.match(error.message, /without a line end/);
      return true;
    });
    await log.close();
    const report = await verifyAuditDir(dir, KEY);
    assert.equal(report.ok, false);
    assert.equal(report.firstBroken?.line, 6, 'reported at the line after the last record');
    assert.match(report.firstBroken?.problem ?? '', /without a line end.*the log was altered/);
    const bytes = statSync(path).size;
    await assert.rejects(AuditLog.open(dir, 1, KEY), /without a line end/);
    assert.equal(statSync(path).size, bytes, 'a start cuts nothing off');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('tail leaves out a last line still being written, even one cut inside a character', async () => {
  const { dir, root } = await logWith(5);
  try {
    const log = await AuditLog.open(dir, 1, KEY);
    const line = Buffer.from('{"seq":6,"identity":"\u00e9l\u00e9onore","target":"app/\u00e9', 'utf8');
    assert.equal(line[line.length - 2], 0xc3, 'the line ends in a two-byte character');
    appendFileSync(join(dir, AUDIT_FILE), line.subarray(0, line.length - 1)); // half of the last é
    assert.deepEqual(
      (await log.tail(10)).map((r) => r.seq),
      [1, 2, 3, 4, 5],
    );
    await log.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a backward scan counts line ends and finds the longest run without one, across chunks', () => {
  assert.deepEqual(scanBackward(Buffer.from('ab\ncdef\ng'), 3), {
    newlines: 2,
    leadingRunBytes: 2,
    longestRunBytes: 4,
  });
  assert.deepEqual(scanBackward(Buffer.from('xyz'), 5), { newlines: 0, leadingRunBytes: 8, longestRunBytes: 8 });
  assert.deepEqual(scanBackward(Buffer.from('\nab'), 0), { newlines: 1, leadingRunBytes: 0, longestRunBytes: 2 });
  assert.deepEqual(scanBackward(Buffer.from('a\n\n'), 7), { newlines: 2, leadingRunBytes: 1, longestRunBytes: 7 });
});

test('records appended together are written at most 64 KiB at a time, so a crash tears no more than a check allows for a torn last line', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-audit-'));
  const dir = join(root, 'audit');
  try {
    const log = await AuditLog.open(dir, 1, KEY, { newLog: true });
    const wide = (k: number) => ({ ...event(k), target: `app/${'x'.repeat(400)}${k}` });
    await Promise.all(Array.from({ length: 600 }, (_, k) => log.append(wide(k))));
    await log.close();
    const bytes = statSync(join(dir, AUDIT_FILE)).size;
    assert.ok(bytes > 4 * AUDIT_LINE_BYTES_MAX, `${bytes} bytes`);
    assert.ok(log.writes >= Math.ceil(bytes / AUDIT_LINE_BYTES_MAX), `${log.writes} writes for ${bytes} bytes`);
    assert.deepEqual(await verifyAuditDir(dir, KEY), { ok: true, records: 600, firstBroken: null });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
