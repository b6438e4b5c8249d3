import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { status } from '@grpc/grpc-js';
import { ClientError } from '../../src/client/client.ts';
import {
  EnvParser,
  type ImportEntry,
  type ParsedLine,
  type PutBatchFunction,
  RATE_LIMIT_RETRIES,
  UNAVAILABLE_RETRIES,
  formatFromName,
  importSecrets,
  isBad,
  isEntry,
  parseImport,
  parseJsonLine,
  rateLimitHintMs,
  rateLimitWaitMs,
} from '../../src/cli/import.ts';
import { PUT_BATCH_BYTES_MAX, SECRET_VALUE_BYTES_MAX } from '../../src/state/limits.ts';
import { coffer } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';

async function parse(text: string, format: 'jsonl' | 'env' | null = null, prefix = ''): Promise<ParsedLine[]> {
  const out: ParsedLine[] = [];
  for await (const p of parseImport(Readable.from([Buffer.from(text)]), { format, prefix })) out.push(p);
  return out;
}
const entries = (parsed: ParsedLine[]) =>
  parsed.filter(isEntry).map((e) => [e.line, e.name, e.value.toString('utf8')] as const);
const bads = (parsed: ParsedLine[]) => parsed.filter(isBad).map((b) => [b.line, b.name, b.reason] as const);

test('.env: dotenv rules (export, quotes, \\n in double quotes only, comments, #, spaces, CRLF, BOM, multi-line values)', async () => {
  const text = [
    '\ufeff# a comment',
    '',
    'PLAIN=value',
    'export EXPORTED=yes',
    'SPACED = padded value  ',
    'EMPTY=',
    "SINGLE='no \\n escape # not a comment'",
    'DOUBLE="two\\nlines\\r" # a comment',
    'BACKTICK=`it\'s "quoted"`',
    'HASH=abc#not-part',
    'ESCQ="say \\"hi\\""',
    'COLON: yaml style',
    'PEM="-----BEGIN-----',
    'AAAA',
    '-----END-----"',
    'a.b-c_d=dotted',
  ].join('\r\n');
  const parsed = await parse(text, 'env');
  assert.deepEqual(entries(parsed), [
    [3, 'PLAIN', 'value'],
    [4, 'EXPORTED', 'yes'],
    [5, 'SPACED', 'padded value'],
    [6, 'EMPTY', ''],
    [7, 'SINGLE', 'no \\n escape # not a comment'],
    [8, 'DOUBLE', 'two\nlines\r'],
    [9, 'BACKTICK', 'it\'s "quoted"'],
    [10, 'HASH', 'abc'],
    [11, 'ESCQ', 'say \\"hi\\"'],
    [12, 'COLON', 'yaml style'],
    [13, 'PEM', '-----BEGIN-----\nAAAA\n-----END-----'],
    [16, 'a.b-c_d', 'dotted'],
  ]);
  assert.deepEqual(bads(parsed), []);
  assert.equal(
    parsed.reduce((n, p) => n + p.lines, 0),
    16,
    'every line is counted once (progress)',
  );
});

test('.env: bad lines are named by number (no name when the line may be a value), and a stray quote costs one line', async () => {
  const parsed = await parse(
    [
      'GOOD=1',
      'just-a-value-no-equals',
      'BAD="closed" trailing',
      'OPEN="never closed',
      'AFTER=2',
      'bad name=3',
      '..=4',
      `BIG=${'x'.repeat(SECRET_VALUE_BYTES_MAX + 1)}`,
      'LAST="x',
    ].join('\n'),
    'env',
  );
  assert.deepEqual(entries(parsed), [
    [1, 'GOOD', '1'],
    [5, 'AFTER', '2'],
  ]);
  const bad = bads(parsed);
  assert.deepEqual(
    bad.map(([line, name]) => [line, name]),
    [
      [2, null],
      [3, 'BAD'],
      [4, 'OPEN'],
      [6, null],
      [7, '..'],
      [8, 'BIG'],
      [9, 'LAST'],
    ],
  );
  assert.match(bad[2]![2], /not closed within 524288 bytes/, 'it ran into the big line');
  assert.match(bad[6]![2], /never closed/);
  assert.match(bad[4]![2], /no "\." or "\.\." segments/);
  assert.match(bad[5]![2], /at most 524288/);
  for (const [, , reason] of bad) assert.doesNotMatch(reason, /just-a-value|never closed"|xxxx/);
});

test('.env: --prefix makes the name; a name given twice is kept twice in file order (the last is current)', async () => {
  const parsed = await parse('A=1\nB=2\nA=3\n', null, 'app/prod/');
  assert.deepEqual(entries(parsed), [
    [1, 'app/prod/A', '1'],
    [2, 'app/prod/B', '2'],
    [3, 'app/prod/A', '3'],
  ]);
  const parser = new EnvParser('x/');
  assert.deepEqual(parser.push('K="a', 1), []);
  assert.deepEqual(
    parser.end().map((p) => [p.line, isBad(p)]),
    [[1, true]],
    'an open quote at the end is a bad line',
  );
});

test('JSON lines: value, value_base64, ttl and versions kept; every kind of bad line, and no value in a reason', async () => {
  const secret = 'hunter2-never-shown';
  const lines = [
    '{"name": "app/a", "value": "plain"}',
    '{"name": "app/bin", "value_base64": "AAEC/w=="}',
    '{"name": "app/ttl", "value": "t", "ttl_seconds": 3600, "versions_kept": 3}',
    '',
    `{"name": "app/truncated", "value": "${secret}`,
    `["app/array", "${secret}"]`,
    `{"value": "${secret}"}`,
    `{"name": "bad name", "value": "${secret}"}`,
    `{"name": "app/both", "value": "${secret}", "value_base64": "AA=="}`,
    '{"name": "app/none"}',
    `{"name": "app/notb64", "value_base64": "${secret}!"}`,
    `{"name": "app/typo", "valeu": "${secret}"}`,
    `{"name": "app/ttl-bad", "value": "${secret}", "ttl_seconds": -1}`,
    `{"name": "app/kept-bad", "value": "${secret}", "versions_kept": 101}`,
    `{"name": "app/num", "value": 42}`,
    '{"name": "app/surrogate", "value": "\\ud800"}',
    JSON.stringify({ name: 'app/big', value: 'x'.repeat(SECRET_VALUE_BYTES_MAX + 1) }),
    JSON.stringify({ name: 'app/max', value: 'x'.repeat(SECRET_VALUE_BYTES_MAX) }),
  ];
  const parsed = await parse(`\ufeff${lines.join('\r\n')}\r\n`, null, '');
  const good = parsed.filter(isEntry);
  assert.deepEqual(
    good.map((e) => e.name),
    ['app/a', 'app/bin', 'app/ttl', 'app/max'],
    'sniffed as JSON lines through the BOM',
  );
  assert.deepEqual([...good[1]!.value], [0, 1, 2, 255]);
  assert.equal(good[2]!.ttlSeconds, 3600);
  assert.equal(good[2]!.versionsKept, 3);
  const bad = bads(parsed);
  assert.deepEqual(
    bad.map(([line]) => line),
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
  );
  assert.deepEqual(
    bad.map(([, name]) => name),
    [
      null,
      null,
      null,
      'bad name',
      'app/both',
      'app/none',
      'app/notb64',
      'app/typo',
      'app/ttl-bad',
      'app/kept-bad',
      'app/num',
      'app/surrogate',
      'app/big',
    ],
  );
  assert.match(bad[0]![2], /^not valid JSON$/, "JSON.parse's message (which quotes the text) is not passed on");
  assert.match(bad[7]![2], /unknown field "valeu"/);
  for (const [, , reason] of bad) assert.ok(!reason.includes(secret), `a value in a reason: ${reason}`);
  assert.deepEqual(parseJsonLine('   ', 1), { line: 1, lines: 1, skipped: true });
  assert.equal(
    (parseJsonLine('{"name":"a","value":"v"}', 1, 'p/') as ImportEntry).name,
    'p/a',
    'a prefix for JSON lines too',
  );
});

test('format: from the name, else sniffed from the first line that is not blank', async () => {
  assert.equal(formatFromName('/x/secrets.jsonl'), 'jsonl');
  assert.equal(formatFromName('dump.NDJSON'), 'jsonl');
  assert.equal(formatFromName('/x/.env'), 'env');
  assert.equal(formatFromName('.env.production'), 'env');
  assert.equal(formatFromName('prod.env'), 'env');
  assert.equal(formatFromName('secrets.txt'), null);
  assert.deepEqual(entries(await parse('\n\n  {"name":"a","value":"1"}\n')), [[3, 'a', '1']]);
  assert.deepEqual(entries(await parse('\nA=1\n')), [[2, 'A', '1']]);
  assert.deepEqual(entries(await parse('{"name":"a","value":"1"}\n', 'env')), [], '--format wins over sniffing');
});

/** Parsed lines for importSecrets, from [name, value] pairs. */
async function* lines(pairs: Array<[string, string]>): AsyncGenerator<ParsedLine> {
  let line = 0;
  for (const [name, value] of pairs) yield { line: ++line, lines: 1, name, value: Buffer.from(value) };
}

test('sending: a bounded window, names in file order, values wiped; refusals reported with line and code', async () => {
  let inFlight = 0;
  let most = 0;
  const stored: Array<[string, string]> = [];
  const sent: Buffer[] = [];
  const summary = await importSecrets(
    lines([
      ...Array.from({ length: 50 }, (_, k): [string, string] => [`n/${k % 5}`, `v${k}`]),
      ['denied/x', 'd'],
      ['quota/x', 'q'],
    ]),
    {
      concurrency: 8,
      put: async (name, value) => {
        inFlight++;
        most = Math.max(most, inFlight);
        sent.push(value);
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 5));
        inFlight--;
        if (name === 'denied/x') throw new ClientError(status.PERMISSION_DENIED, 'may not write "denied/x"');
        if (name === 'quota/x')
          throw new ClientError(status.RESOURCE_EXHAUSTED, 'identity "a" has created 10000 secrets, the most');
        stored.push([name, value.toString()]);
        return { version: 1 };
      },
    },
  );
  assert.ok(most <= 8 && most >= 4, `window ${most}`);
  assert.equal(summary.imported, 50);
  assert.equal(summary.refused, 2);
  assert.deepEqual(
    summary.failures.map((f) => [f.line, f.name, f.code]),
    [
      [51, 'denied/x', 'PERMISSION_DENIED'],
      [52, 'quota/x', 'RESOURCE_EXHAUSTED'],
    ],
    'a quota is no rate limit: reported, not retried',
  );
  for (let k = 0; k < 5; k++) {
    assert.deepEqual(
      stored.filter(([n]) => n === `n/${k}`).map(([, v]) => v),
      Array.from({ length: 10 }, (_, j) => `v${k + 5 * j}`),
      'the lines of one name in file order',
    );
  }
  assert.ok(
    sent.every((b) => b.every((byte) => byte === 0)),
    'every value wiped after its put',
  );
});

test('retries: a rate limit pauses and retries (its hint read), UNAVAILABLE a few times then the import stops; --if-absent counts existing names', async () => {
  assert.equal(rateLimitHintMs('exceeded 10 requests/s on this manager (--x); retry in 37 ms'), 37);
  assert.equal(rateLimitHintMs('exceeded 1 MiB of writes per minute; retry in 3 s'), 3000);
  assert.equal(rateLimitHintMs('exceeded the write rate'), 0);
  assert.equal(rateLimitHintMs('identity "a" holds 256 MiB of secret values'), null, 'a quota: not retried');
  assert.equal(rateLimitWaitMs(37, 0), 50);
  assert.equal(rateLimitWaitMs(3000, 0), 3000);
  assert.equal(rateLimitWaitMs(37, 3), 400, 'doubling per retry of the line');
  assert.equal(rateLimitWaitMs(0, 30), 60_000, 'bounded');

  const waits: number[] = [];
  const sleep = async (ms: number) => {
    waits.push(ms);
  };
  const tries = new Map<string, number>();
  const limited = await importSecrets(
    lines([
      ['a', '1'],
      ['b', '2'],
      ['always', '3'],
    ]),
    {
      concurrency: 2,
      sleep,
      put: async (name) => {
        const k = (tries.get(name) ?? 0) + 1;
        tries.set(name, k);
        if (name === 'always' || k <= 2)
          throw new ClientError(status.RESOURCE_EXHAUSTED, 'over the rate; retry in 40 ms');
        return {};
      },
    },
  );
  assert.equal(limited.imported, 2);
  assert.equal(tries.get('a'), 3);
  assert.equal(tries.get('always'), RATE_LIMIT_RETRIES + 1, 'bounded');
  assert.deepEqual(
    limited.failures.map((f) => [f.line, f.code]),
    [[3, 'RESOURCE_EXHAUSTED']],
  );
  assert.ok(
    waits.every((w) => w >= 40 * 0.5),
    'waits follow the hint',
  );

  // A manager that sends reasons: the wait comes from retryAfterMs, whatever the message says;
  // a quota (QUOTA_EXCEEDED) is not retried even if its message mentions a rate.
  waits.length = 0;
  const reasoned = new Map<string, number>();
  const byReason = await importSecrets(
    lines([
      ['r', '1'],
      ['q', '2'],
    ]),
    {
      concurrency: 1,
      sleep,
      put: async (name) => {
        const k = (reasoned.get(name) ?? 0) + 1;
        reasoned.set(name, k);
        if (name === 'q')
          throw new ClientError(status.RESOURCE_EXHAUSTED, 'a quota, at its rate', {
            reason: 'QUOTA_EXCEEDED',
            metadata: { quota: 'IDENTITY_SECRETS_MAX', limit: '1' },
          });
        if (k === 1)
          throw new ClientError(status.RESOURCE_EXHAUSTED, 'slow down', {
            reason: 'RATE_LIMITED',
            metadata: { retryAfterMs: '700' },
          });
        return {};
      },
    },
  );
  assert.deepEqual([byReason.imported, reasoned.get('r'), reasoned.get('q')], [1, 2, 1]);
  assert.ok(waits.length > 0 && waits.every((w) => w >= 700), `waits ${waits.join(', ')} follow retryAfterMs`);

  let calls = 0;
  const down = await importSecrets(lines(Array.from({ length: 100 }, (_, k): [string, string] => [`s/${k}`, 'v'])), {
    concurrency: 4,
    sleep,
    put: async () => {
      calls++;
      throw new ClientError(status.UNAVAILABLE, 'no leader is known; retry once one is elected');
    },
  });
  assert.equal(down.imported, 0);
  assert.ok(down.stoppedAtLine !== null && down.stoppedAtLine <= 6, `stopped at ${down.stoppedAtLine}`);
  assert.ok(calls <= 5 * (UNAVAILABLE_RETRIES + 1), `${calls} calls: the import stopped`);
  assert.ok(down.failures.every((f) => f.code === 'UNAVAILABLE'));

  const existing = await importSecrets(
    lines([
      ['new', '1'],
      ['old', '2'],
    ]),
    {
      concurrency: 2,
      ifAbsent: true,
      put: async (name, _value, options) => {
        assert.equal(options.cas, 0);
        if (name === 'old') throw new ClientError(status.FAILED_PRECONDITION, 'secret "old" already exists');
        return {};
      },
    },
  );
  assert.deepEqual([existing.imported, existing.existing, existing.refused], [1, 1, 0]);

  const dry = await importSecrets(lines([['a', '1']]), { concurrency: 1, dryRun: true });
  assert.deepEqual([dry.valid, dry.imported], [1, 0]);
});

/** A batch as the mock saw it: names and values (copied before they are wiped). */
type SeenBatch = Array<[string, string]>;

test('batches: lines grouped up to the item and byte limits, a few in flight, lines of a name in file order across batches, values wiped', async () => {
  let inFlight = 0;
  let most = 0;
  const seen: SeenBatch[] = [];
  const stored: Array<[string, string]> = [];
  const sent: Buffer[] = [];
  const putBatch: PutBatchFunction = async (items) => {
    inFlight++;
    most = Math.max(most, inFlight);
    seen.push(items.map((i) => [i.name, i.value.toString()]));
    sent.push(...items.map((i) => i.value));
    // The earlier a batch, the slower its answer: a later batch of the same names must still wait for it.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, 30 - 10 * seen.length)));
    stored.push(...items.map((i): [string, string] => [i.name, i.value.toString()]));
    inFlight--;
    return { versions: items.map(() => 1) };
  };
  const summary = await importSecrets(
    lines(Array.from({ length: 600 }, (_, k): [string, string] => [`n/${k % 7}`, `v${k}`])),
    {
      concurrency: 8,
      batchesInFlight: 3,
      putBatch,
      put: async () => assert.fail('no single put: no batch was refused'),
    },
  );
  assert.deepEqual(
    seen.map((b) => b.length),
    [256, 256, 88],
    'full batches of PUT_BATCH_ITEMS_MAX, the rest at the end',
  );
  assert.deepEqual([summary.imported, summary.batches, summary.batchesSplit], [600, 3, 0]);
  assert.ok(most <= 3);
  for (let k = 0; k < 7; k++)
    assert.deepEqual(
      stored.filter(([n]) => n === `n/${k}`).map(([, v]) => v),
      Array.from({ length: 600 }, (_, j) => j)
        .filter((j) => j % 7 === k)
        .map((j) => `v${j}`),
      'the lines of one name in file order, across batches',
    );
  assert.ok(
    sent.every((b) => b.every((byte) => byte === 0)),
    'every value wiped once its batch is answered',
  );

  // Bytes: values of 100 KiB, 9 to a batch (10 would pass PUT_BATCH_BYTES_MAX); distinct names go
  // several batches at once, and --batch-items bounds the items.
  seen.length = 0;
  most = 0;
  const big = 'x'.repeat(100 * 1024);
  await importSecrets(lines(Array.from({ length: 20 }, (_, k): [string, string] => [`big/${k}`, big])), {
    concurrency: 8,
    batchesInFlight: 4,
    putBatch,
  });
  assert.ok(9 * (100 * 1024 + 6) <= PUT_BATCH_BYTES_MAX && 10 * 100 * 1024 > PUT_BATCH_BYTES_MAX);
  assert.deepEqual(
    seen.map((b) => b.length),
    [9, 9, 2],
  );
  assert.ok(most >= 2, 'batches of different names go at once');
  seen.length = 0;
  await importSecrets(lines(Array.from({ length: 10 }, (_, k): [string, string] => [`few/${k}`, 'v'])), {
    concurrency: 8,
    batchItemsMax: 4,
    putBatch,
  });
  assert.deepEqual(
    seen.map((b) => b.length),
    [4, 4, 2],
  );
});

test("a batch refused for one of its items is sent again line by line: the good lines go in, the bad one is reported with the cluster's message", async () => {
  const stored = new Map<string, string[]>();
  const keep = (name: string, value: Buffer) => stored.set(name, [...(stored.get(name) ?? []), value.toString()]);
  let batchCalls = 0;
  const summary = await importSecrets(
    lines([
      ['ok/a', '1'],
      ['denied/x', '2'],
      ['ok/b', '3'],
      ['ok/a', '4'],
      ['ok/c', '5'],
    ]),
    {
      concurrency: 4,
      batchItemsMax: 4,
      putBatch: async (items) => {
        batchCalls++;
        const bad = items.findIndex((i) => i.name.startsWith('denied/'));
        if (bad >= 0)
          throw new ClientError(
            status.PERMISSION_DENIED,
            `item ${bad + 1} of ${items.length} ("denied/x"): may not write "denied/x"; no item of the batch was applied`,
            { reason: 'POLICY_DENIED', metadata: { item: String(bad + 1) } },
          );
        for (const i of items) keep(i.name, i.value);
        return {};
      },
      put: async (name, value) => {
        if (name.startsWith('denied/')) throw new ClientError(status.PERMISSION_DENIED, 'may not write "denied/x"');
        keep(name, value);
        return {};
      },
    },
  );
  assert.equal(batchCalls, 2);
  assert.deepEqual([summary.imported, summary.refused, summary.batches, summary.batchesSplit], [4, 1, 1, 1]);
  assert.deepEqual(
    summary.failures.map((f) => [f.line, f.name, f.code, f.reason]),
    [[2, 'denied/x', 'PERMISSION_DENIED', 'may not write "denied/x"']],
    "the single put's message, not the batch's",
  );
  assert.deepEqual(stored.get('ok/a'), ['1', '4'], 'file order kept through the split');
  assert.deepEqual([...stored.keys()].sort(), ['ok/a', 'ok/b', 'ok/c']);

  // --if-absent: a batch refused because one name exists goes line by line; the others go in.
  const existing = new Set(['old']);
  const absent = await importSecrets(
    lines([
      ['new1', '1'],
      ['old', '2'],
      ['new2', '3'],
    ]),
    {
      concurrency: 2,
      ifAbsent: true,
      putBatch: async (items) => {
        assert.ok(items.every((i) => i.cas === 0));
        const found = items.findIndex((i) => existing.has(i.name));
        if (found >= 0)
          throw new ClientError(status.FAILED_PRECONDITION, `item ${found + 1}: secret "old" already exists`, {
            reason: 'CAS_MISMATCH',
            metadata: { item: String(found + 1) },
          });
        return {};
      },
      put: async (name, _value, options) => {
        assert.equal(options.cas, 0);
        if (existing.has(name))
          throw new ClientError(status.FAILED_PRECONDITION, 'secret "old" already exists', {
            reason: 'CAS_MISMATCH',
            metadata: {},
          });
        existing.add(name);
        return {};
      },
    },
  );
  assert.deepEqual([absent.imported, absent.existing, absent.refused, absent.batchesSplit], [2, 1, 0, 1]);
  assert.ok(existing.has('new1') && existing.has('new2'));

  // A cluster that does not know PutBatch: one try, then every line as a put.
  let unimplemented = 0;
  let puts = 0;
  const old = await importSecrets(lines(Array.from({ length: 30 }, (_, k): [string, string] => [`s/${k}`, 'v'])), {
    concurrency: 4,
    batchItemsMax: 10,
    batchesInFlight: 1,
    putBatch: async () => {
      unimplemented++;
      throw new ClientError(
        status.UNIMPLEMENTED,
        'The server does not implement the method /coffer.v1.Secrets/PutBatch',
      );
    },
    put: async () => {
      puts++;
      return {};
    },
  });
  assert.deepEqual([old.imported, unimplemented, puts], [30, 1, 30]);
});

test('batches are retried as puts are: a rate limit pauses them, UNAVAILABLE a few times then the import stops at the first line not sent', async () => {
  const waits: number[] = [];
  const sleep = async (ms: number) => {
    waits.push(ms);
  };
  let tries = 0;
  const limited = await importSecrets(lines(Array.from({ length: 20 }, (_, k): [string, string] => [`r/${k}`, 'v'])), {
    concurrency: 4,
    sleep,
    putBatch: async () => {
      if (++tries <= 2)
        throw new ClientError(status.RESOURCE_EXHAUSTED, 'slow down', {
          reason: 'RATE_LIMITED',
          metadata: { retryAfterMs: '300' },
        });
      return {};
    },
  });
  assert.deepEqual([limited.imported, limited.retries, limited.batchesSplit, tries], [20, 2, 0, 3]);
  assert.ok(waits.length > 0 && waits.every((w) => w >= 300), `waits ${waits.join(', ')} follow retryAfterMs`);

  let calls = 0;
  const down = await importSecrets(lines(Array.from({ length: 100 }, (_, k): [string, string] => [`s/${k}`, 'v'])), {
    concurrency: 4,
    batchItemsMax: 10,
    batchesInFlight: 2,
    sleep,
    putBatch: async () => {
      calls++;
      throw new ClientError(status.UNAVAILABLE, 'no leader is known; retry once one is elected');
    },
    put: async () => assert.fail('an unavailable cluster is not asked line by line'),
  });
  assert.equal(down.imported, 0);
  assert.ok(down.stoppedAtLine !== null && down.stoppedAtLine <= 31, `stopped at ${down.stoppedAtLine}`);
  assert.ok(calls <= 3 * (UNAVAILABLE_RETRIES + 1), `${calls} calls: the import stopped`);
  assert.ok(down.failures.length >= 10 && down.failures.every((f) => f.code === 'UNAVAILABLE'));
});

test('coffer secret import against a three-manager cluster: good lines stored, bad and denied lines named, no value printed, exit statuses; 2,000 lines timed', {
  timeout: 180_000,
}, async (t) => {
  const cluster = await InProcessCluster.start(3);
  try {
    const root = cluster.root;
    const admin = {
      COFFER_ADDR: cluster.addresses.join(','),
      COFFER_CA: join(cluster.adminDir, 'ca.crt'),
      COFFER_CERT: join(cluster.adminDir, 'admin.crt'),
      COFFER_KEY: join(cluster.adminDir, 'admin.key'),
    };
    const run = (args: string[], env: Record<string, string> = admin, input = '') => coffer(args, input, env);
    const value = () => `val-${randomBytes(12).toString('hex')}`;
    const values = { db: value(), api: value(), env1: value(), env2: value(), hidden: value() };

    // JSON lines with good and bad lines.
    const jsonl = join(root, 'secrets.jsonl');
    writeFileSync(
      jsonl,
      [
        JSON.stringify({ name: 'app/db', value: values.db }),
        JSON.stringify({ name: 'bad\u001b[31mname', value: values.hidden }),
        `{"name": "app/broken", "value": "${values.hidden}`,
        JSON.stringify({ name: 'app/api', value_base64: Buffer.from(values.api).toString('base64') }),
        JSON.stringify({ name: 'app/big', value: 'x'.repeat(SECRET_VALUE_BYTES_MAX + 1) }),
      ].join('\n'),
    );
    const first = await run(['secret', 'import', jsonl]);
    assert.equal(first.code, 1, first.stderr);
    assert.match(first.stdout, /^imported 2 of 2 secrets from 5 lines in [\d.]+ s; 3 bad lines skipped; 0 refused$/m);
    assert.match(first.stderr, /line 2 "bad\\x1b\[31mname": skipped: a secret name is/);
    assert.match(first.stderr, /line 3: skipped: not valid JSON/);
    assert.match(first.stderr, /line 5 "app\/big": skipped: the value has 524289 bytes/);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: no raw escape may reach the terminal
    assert.doesNotMatch(first.stderr, /\u001b/);
    assert.equal((await run(['secret', 'get', 'app/db'])).stdout, values.db);
    assert.equal((await run(['secret', 'get', 'app/api'])).stdout, values.api);

    // .env from stdin with a prefix, --if-absent, JSON summary.
    const env = `# exported from the old store\nDB_PASSWORD="${values.env1}"\nexport API_KEY=${values.env2}\nnot a line\n`;
    const second = await run(
      ['secret', 'import', '-', '--format', 'env', '--prefix', 'svc/prod/', '--if-absent', '--output', 'json'],
      admin,
      env,
    );
    assert.equal(second.code, 1, second.stderr);
    const summary = JSON.parse(second.stdout) as {
      imported: number;
      bad: number;
      failures: Array<{ line: number; kind: string }>;
    };
    assert.equal(summary.imported, 2);
    assert.deepEqual(
      summary.failures.map((f) => [f.line, f.kind]),
      [[4, 'bad']],
    );
    assert.equal((await run(['secret', 'get', 'svc/prod/DB_PASSWORD'])).stdout, values.env1);
    const again = await run(
      ['secret', 'import', '-', '--format', 'env', '--prefix', 'svc/prod/', '--if-absent'],
      admin,
      'DB_PASSWORD=other\n',
    );
    assert.equal(again.code, 0, 'with --if-absent an existing name is no failure');
    assert.match(again.stdout, /imported 0 of 1 .*; 1 already existed/);
    assert.equal((await run(['secret', 'get', 'svc/prod/DB_PASSWORD'])).stdout, values.env1, 'left alone');

    // A narrow identity: writes under team/ok/ only.
    writeFileSync(join(root, 'policy.json'), JSON.stringify([{ path: 'team/ok/**', capabilities: ['write', 'read'] }]));
    assert.equal((await run(['policy', 'put', 'team-ok', '--file', join(root, 'policy.json')])).code, 0);
    const narrowDir = join(root, 'narrow');
    const issued = await run(['identity', 'issue', 'narrow', '--policy', 'team-ok', '--out', narrowDir]);
    assert.equal(issued.code, 0, issued.stderr);
    const narrow = Object.fromEntries(
      readFileSync(join(narrowDir, 'client.env'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => l.split(/=(.*)/s).slice(0, 2) as [string, string]),
    );
    const mixed = join(root, 'mixed.jsonl');
    writeFileSync(
      mixed,
      ['team/ok/a', 'team/other/b', 'team/ok/c', 'team/other/d']
        .map((name) => JSON.stringify({ name, value: values.hidden }))
        .join('\n'),
    );
    const denied = await run(['secret', 'import', mixed], narrow);
    assert.equal(denied.code, 1, denied.stderr);
    assert.match(denied.stdout, /imported 2 of 4 .*; 2 refused/);
    assert.match(denied.stderr, /line 2 "team\/other\/b": refused: PERMISSION_DENIED: /);
    assert.match(denied.stderr, /line 4 "team\/other\/d": refused: PERMISSION_DENIED: /);
    assert.equal((await run(['secret', 'get', 'team/ok/c'], narrow)).stdout, values.hidden);

    for (const r of [first, second, again, denied])
      for (const v of Object.values(values))
        assert.ok(!r.stdout.includes(v) && !r.stderr.includes(v), 'a value was printed');

    // Usage errors: 2.
    assert.equal((await run(['secret', 'import', join(root, 'missing.env')])).code, 2);
    assert.equal((await run(['secret', 'import', jsonl, '--format', 'yaml'])).code, 2);
    assert.equal((await run(['secret', 'import', jsonl, '--prefix', '../x/'])).code, 2);

    // 2,000 lines, all good: exit 0, and the rate.
    const many = join(root, 'many.jsonl');
    writeFileSync(
      many,
      Array.from({ length: 2000 }, (_, k) =>
        JSON.stringify({ name: `load/s${k}`, value: `v${k}-${'x'.repeat(64)}` }),
      ).join('\n'),
    );
    const timed = await run(['secret', 'import', many, '--output', 'json']);
    assert.equal(timed.code, 0, timed.stderr);
    const result = JSON.parse(timed.stdout) as {
      imported: number;
      linesPerSecond: number;
      seconds: number;
      batches: number;
      batchesSplit: number;
    };
    assert.equal(result.imported, 2000);
    assert.deepEqual([result.batches, result.batchesSplit], [8, 0], 'in batches of 256');
    t.diagnostic(`2,000 lines in ${result.seconds} s: ${result.linesPerSecond} lines/s`);
    assert.equal((await run(['secret', 'get', 'load/s1999'])).stdout, `v1999-${'x'.repeat(64)}`);
  } finally {
    await cluster.stop();
  }
});

test("coffer secret import under the cluster's rate limit: refusals paused and retried, every line imported", {
  timeout: 120_000,
}, async (t) => {
  const cluster = await InProcessCluster.start(1, { identityRequestsPerSecond: 40 });
  try {
    const admin = {
      COFFER_ADDR: cluster.addresses.join(','),
      COFFER_CA: join(cluster.adminDir, 'ca.crt'),
      COFFER_CERT: join(cluster.adminDir, 'admin.crt'),
      COFFER_KEY: join(cluster.adminDir, 'admin.key'),
    };
    const file = join(cluster.root, 'limited.jsonl');
    writeFileSync(
      file,
      Array.from({ length: 200 }, (_, k) => JSON.stringify({ name: `rl/s${k}`, value: `v${k}` })).join('\n'),
    );
    // Batches of 2: 100 requests, well over the 40 a second allowed (one batch of 200 would pass).
    const r = await coffer(['secret', 'import', file, '--output', 'json', '--batch-items', '2'], '', admin);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const summary = JSON.parse(r.stdout) as { imported: number; retries: number; refused: number };
    assert.equal(summary.imported, 200);
    assert.ok(summary.retries > 0, 'the rate limit was met (else this test proves nothing)');
    t.diagnostic(`200 lines at 40 requests/s: ${summary.retries} retries`);
    assert.equal((await coffer(['secret', 'get', 'rl/s199'], '', admin)).stdout, 'v199');
  } finally {
    await cluster.stop();
  }
});

test('a put a leader change dropped (ABORTED) is sent again; one dropped every time is reported, and the import goes on', async () => {
  const sleep = async () => {};
  const tries = new Map<string, number>();
  const summary = await importSecrets(
    lines([
      ['once', '1'],
      ['always', '2'],
      ['after', '3'],
    ]),
    {
      concurrency: 1,
      sleep,
      put: async (name) => {
        const k = (tries.get(name) ?? 0) + 1;
        tries.set(name, k);
        if (name === 'always' || (name === 'once' && k === 1))
          throw new ClientError(status.ABORTED, 'the proposal was replaced by a new leader entry; it was not applied');
        return {};
      },
    },
  );
  assert.equal(tries.get('once'), 2);
  assert.equal(tries.get('always'), UNAVAILABLE_RETRIES + 1, 'bounded');
  assert.equal(summary.imported, 2);
  assert.equal(summary.stoppedAtLine, null, 'a dropped put does not stop the import');
  assert.deepEqual(
    summary.failures.map((f) => [f.line, f.code]),
    [[2, 'ABORTED']],
  );
});
