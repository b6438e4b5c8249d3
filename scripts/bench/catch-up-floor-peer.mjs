// The bare parts of a catch-up (catch-up-floor.ts): plain JavaScript on Node, node:http2 over
// mutual TLS and LevelDB (the `level` package), nothing of Coffer. Three modes:
//   fill DB COUNT        writes COUNT records (the scale bench's names, 256 random bytes) into DB,
//                        compacts it, prints "filled"
//   serve DB DIR         the leader's part, started before the timing: listens on 127.0.0.1 (prints
//                        "port N"); to each request it streams every record of DB (read in pages
//                        of 1,024 through one iterator) in chunks of 1 MiB, flow-controlled
//   pull DIR PORT        the new member, started inside the timing: connects (with the receive
//                        windows Coffer's Raft streams use), asks for the records, writes them
//                        into a fresh LevelDB in DIR (chained batches of 1,024; the last, which
//                        always holds a marker, synced), prints "pulled N" and stays
// Each stays until killed (the benchmark reads their CPU time first), or until its stdin ends
// (the benchmark that started it is gone).
// DIR holds ca.crt, server.crt/key and client.crt/key (written by catch-up-floor.ts).
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import { join } from 'node:path';
import { Level } from 'level';

const [mode, ...args] = process.argv.slice(2);
const CHUNK_BYTES = 1024 * 1024;
const PAGE_RECORDS = 1024;
const BATCH_RECORDS = 1024;
const ENCODING = { keyEncoding: 'buffer', valueEncoding: 'buffer' };
/** The scale bench's names (scale.ts's secretName; this file is plain JavaScript and cannot import it). */
const secretName = (k) => `scale/d${k % 1000}/s${k}`;
/** As Coffer's peer streams widen them (src/transport/receive-window.ts). */
const STREAM_WINDOW_BYTES = 1024 * 1024;
const SESSION_WINDOW_BYTES = 2 * 1024 * 1024;
const DONE_MARKER = Buffer.from('floor/done');

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

async function fill(dbDir, count) {
  const db = new Level(dbDir, ENCODING);
  await db.open();
  for (let k = 0; k < count; ) {
    const batch = db.batch();
    for (const end = Math.min(count, k + BATCH_RECORDS); k < end; k++)
      batch.put(Buffer.from(secretName(k)), randomBytes(256));
    await batch.write();
  }
  await db.compactRange(Buffer.from('scale/'), Buffer.from('scale0'));
  await db.close();
  process.stdout.write('filled\n');
  stayUntilKilled();
}

function tls(dir, who) {
  const read = (name) => readFileSync(join(dir, name));
  return { ca: read('ca.crt'), cert: read(`${who}.crt`), key: read(`${who}.key`) };
}

/** Streams every record of `db` on `stream`: [key length u32][value length u32][key][value]. */
async function streamRecords(db, stream) {
  stream.respond({ ':status': 200 });
  let chunk = Buffer.allocUnsafe(CHUNK_BYTES);
  let used = 0;
  const flush = async () => {
    if (used === 0) return;
    const roomLeft = stream.write(chunk.subarray(0, used));
    chunk = Buffer.allocUnsafe(CHUNK_BYTES);
    used = 0;
    if (!roomLeft) await once(stream, 'drain');
  };
  const iterator = db.iterator();
  try {
    for (;;) {
      const page = await iterator.nextv(PAGE_RECORDS);
      if (page.length === 0) break;
      for (const [key, value] of page) {
        const length = 8 + key.length + value.length;
        if (used + length > CHUNK_BYTES) await flush();
        chunk.writeUInt32BE(key.length, used);
        chunk.writeUInt32BE(value.length, used + 4);
        key.copy(chunk, used + 8);
        value.copy(chunk, used + 8 + key.length);
        used += length;
      }
    }
    await flush();
  } finally {
    await iterator.close();
  }
  stream.end();
}

async function serve(dbDir, dir) {
  const db = new Level(dbDir, ENCODING);
  await db.open();
  const server = http2.createSecureServer({ ...tls(dir, 'server'), requestCert: true, rejectUnauthorized: true });
  server.on('stream', (stream) => {
    streamRecords(db, stream).catch((error) => stream.destroy(error));
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`port ${server.address().port}\n`));
}

async function pull(dir, port) {
  const db = new Level(join(dir, 'pulled'), ENCODING);
  await db.open();
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    ...tls(dir, 'client'),
    checkServerIdentity: () => undefined,
    settings: { initialWindowSize: STREAM_WINDOW_BYTES },
  });
  session.once('connect', () => session.setLocalWindowSize(SESSION_WINDOW_BYTES));
  const stream = session.request({ ':method': 'POST', ':path': '/records' });
  stream.end();
  const [headers] = await once(stream, 'response');
  if (headers[':status'] !== 200) throw new Error(`the server answered ${headers[':status']}`);
  let carry = Buffer.alloc(0);
  let batch = db.batch();
  let records = 0;
  for await (const data of stream) {
    const buffer = carry.length === 0 ? data : Buffer.concat([carry, data]);
    let at = 0;
    while (buffer.length - at >= 8) {
      const keyLength = buffer.readUInt32BE(at);
      const valueLength = buffer.readUInt32BE(at + 4);
      if (buffer.length - at < 8 + keyLength + valueLength) break;
      const valueAt = at + 8 + keyLength;
      batch.put(buffer.subarray(at + 8, valueAt), buffer.subarray(valueAt, valueAt + valueLength));
      at = valueAt + valueLength;
      records++;
    }
    carry = buffer.subarray(at);
    if (batch.length >= BATCH_RECORDS) {
      await batch.write();
      batch = db.batch();
    }
  }
  if (carry.length > 0) throw new Error(`the stream ended inside a record (${carry.length} bytes left)`);
  batch.put(DONE_MARKER, Buffer.from(String(records)));
  await batch.write({ sync: true });
  process.stdout.write(`pulled ${records}\n`);
  session.close();
  await db.close();
  stayUntilKilled();
}

// The benchmark reads each process's CPU time once the records are written, then kills it.
function stayUntilKilled() {
  setInterval(() => undefined, 1 << 30);
}

if (mode === 'fill') await fill(args[0], Number(args[1]));
else if (mode === 'serve') await serve(args[0], args[1]);
else if (mode === 'pull') await pull(args[0], Number(args[1]));
else throw new Error(`unknown mode ${mode}: fill, serve or pull`);
