import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { createLogger, logFormat, REDACTED_KEYS, REDACTION_CENSOR } from '../../src/util/logger.ts';

function capture(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString('utf8'));
      callback();
    },
  });
  return { lines, stream };
}

test('secret-bearing fields are redacted at the top level and one or two objects deep', () => {
  const { lines, stream } = capture();
  const log = createLogger({ destination: stream, level: 'debug' });
  const secrets: string[] = [];
  for (const key of REDACTED_KEYS) {
    const a = randomBytes(12).toString('hex');
    const b = randomBytes(12).toString('hex');
    const c = randomBytes(12).toString('hex');
    secrets.push(a, b, c);
    log.info({ [key]: a, request: { [key]: b }, outer: { inner: { [key]: c } } }, 'request handled');
  }
  assert.equal(lines.length, REDACTED_KEYS.length);
  const all = lines.join('');
  for (const secret of secrets) {
    assert.ok(!all.includes(secret), `a secret value reached the log: ${secret.slice(0, 4)}…`);
    assert.ok(!all.includes(Buffer.from(secret).toString('base64')), 'a secret value reached the log in base64');
  }
  assert.ok(all.includes(REDACTION_CENSOR));
});

test('fields that carry no secret are logged as they are', () => {
  const { lines, stream } = capture();
  createLogger({ destination: stream, component: 'server' }).info({ method: 'Get', name: 'db/password', status: 'OK' }, 'done');
  const line = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.equal(line['method'], 'Get');
  assert.equal(line['name'], 'db/password');
  assert.equal(line['component'], 'server');
});

test('log format: JSON for machines, pretty on a terminal, COFFER_LOG_FORMAT decides when set', () => {
  assert.equal(logFormat({}, false), 'json');
  assert.equal(logFormat({}, true), 'pretty');
  assert.equal(logFormat({ COFFER_LOG_FORMAT: 'json' }, true), 'json');
  assert.equal(logFormat({ COFFER_LOG_FORMAT: 'pretty' }, false), 'pretty');
});

test('pretty lines are redacted as JSON lines are, and readable', () => {
  const { lines, stream } = capture();
  const secret = randomBytes(12).toString('hex');
  createLogger({ destination: stream, format: 'pretty', component: 'server' }).info({ method: 'Secrets.Put', value: secret, request: { password: secret } }, 'request');
  const all = lines.join('');
  assert.ok(!all.includes(secret), 'a secret value reached a pretty log line');
  assert.ok(all.includes(REDACTION_CENSOR));
  assert.match(all, /INFO.*request/);
  assert.match(all, /Secrets\.Put/);
  assert.throws(() => JSON.parse(all.trim()), 'pretty lines are not JSON');
});

test('a process whose stdout is a terminal (a pseudo-terminal from script) logs pretty lines; on a pipe, JSON', { timeout: 60_000 }, async () => {
  // `script` gives the child a pseudo-terminal; the child logs one line through the managers' logger.
  const { execFileSync } = await import('node:child_process');
  const program = "import('./src/util/logger.ts').then((m) => m.createLogger({ component: 't' }).info({ method: 'Secrets.Get', token: 'tok-3141' }, 'hello'))";
  const viaPipe = execFileSync(process.execPath, ['--import', 'tsx', '-e', program], { encoding: 'utf8', env: { ...process.env, COFFER_LOG_FORMAT: '' } });
  assert.equal((JSON.parse(viaPipe.trim()) as { msg: string }).msg, 'hello');
  const command = `${process.execPath} --import tsx -e "${program.replace(/"/g, '\\"')}"`;
  const viaTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', env: { ...process.env, COFFER_LOG_FORMAT: '' } });
  assert.match(viaTerminal, /INFO.*hello/);
  assert.doesNotMatch(viaTerminal, /tok-3141/);
  assert.throws(() => JSON.parse(viaTerminal.trim()));
});
