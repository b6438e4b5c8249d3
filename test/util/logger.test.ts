import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { createLogger, REDACTED_KEYS, REDACTION_CENSOR } from '../../src/util/logger.ts';

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
