import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomFillSync } from 'node:crypto';
import { Session } from 'node:inspector/promises';
import { InProcessCluster } from './in-process-cluster.ts';

/**
 * A value is held in plaintext only while a request needs it. A manager runs in this process
 * (with its client); after 1,000 values are written and read back, and a full garbage collection,
 * the live objects of the process (every Uint8Array and Buffer, found through the inspector's
 * Runtime.queryObjects) are searched for the values: none may hold one. Before the state store,
 * every version of every secret lived in the heap for the manager's whole life.
 */

const VALUES = 1_000;
let cluster: InProcessCluster;

before(async () => {
  cluster = await InProcessCluster.start(1);
});

after(async () => {
  await cluster?.stop();
});

/**
 * Live Uint8Arrays (Buffers included) of this process holding `marker`, after a full GC: for
 * each, its class, length, the offset of the marker and the 32 bytes before it (not the value).
 */
async function liveBuffersHolding(markerHex: string): Promise<string[]> {
  const session = new Session();
  session.connect();
  try {
    await session.post('HeapProfiler.enable');
    await session.post('HeapProfiler.collectGarbage');
    const proto = await session.post('Runtime.evaluate', { expression: 'Uint8Array.prototype' });
    const found = (await session.post('Runtime.queryObjects', {
      prototypeObjectId: proto.result.objectId!,
      objectGroup: 'heap-residency',
    })) as unknown as { objects: { objectId?: string } };
    // The marker becomes bytes only inside the search, after the live objects were listed.
    const counted = (await session.post('Runtime.callFunctionOn', {
      objectId: found.objects.objectId!,
      functionDeclaration: `function (hex) {
        const marker = Buffer.from(hex, 'hex');
        const holding = [];
        for (const bytes of this) {
          // The list holds prototypes too (Buffer.prototype is a Uint8Array by its chain).
          if (!ArrayBuffer.isView(bytes) || bytes.byteLength < marker.length) continue;
          const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
          const at = view.indexOf(marker);
          if (at >= 0)
            holding.push(bytes.constructor.name + ' of ' + bytes.byteLength + ' bytes (' + bytes.buffer.byteLength +
              ' underneath), at ' + at + ', after ' + view.subarray(Math.max(0, at - 32), at).toString('hex'));
        }
        marker.fill(0);
        return holding;
      }`,
      arguments: [{ value: markerHex }],
      returnByValue: true,
    })) as unknown as { result: { value: unknown } };
    await session.post('Runtime.releaseObjectGroup', { objectGroup: 'heap-residency' });
    assert.ok(Array.isArray(counted.result.value), `the search ran: ${JSON.stringify(counted.result)}`);
    return counted.result.value as string[];
  } finally {
    session.disconnect();
  }
}

test('after 1,000 values are written and read, no live object of the manager holds one in plaintext', async () => {
  const address = cluster.addresses[0]!;
  // Each value: a run marker (kept here only as hex text), its number, random bytes. The test
  // wipes its own buffers after use, so a hit can only be the manager's (or the client's) copy.
  const markerHex = randomBytes(12).toString('hex');
  // Buffer.alloc is never carved from Node's shared pool: zeroing the buffer leaves no copy behind.
  const makeValue = (k: number): Buffer => {
    const value = Buffer.alloc(12 + 6 + 24);
    value.write(markerHex, 0, 'hex');
    value.write(String(k).padStart(6, '0'), 12, 'latin1');
    randomFillSync(value, 18);
    return value;
  };
  for (let k = 0; k < VALUES; k += 50) {
    await Promise.all(
      Array.from({ length: 50 }, async (_, j) => {
        const value = makeValue(k + j);
        try {
          await cluster.admin.call(address, 'Secrets', 'put', { name: `heap/s${k + j}`, value });
        } finally {
          value.fill(0);
        }
      }),
    );
  }
  let read = 0;
  for (let k = 0; k < VALUES; k += 50) {
    await Promise.all(
      Array.from({ length: 50 }, async (_, j) => {
        const reply = await cluster.admin.call<{ value: Buffer }>(address, 'Secrets', 'get', {
          name: `heap/s${k + j}`,
        });
        if (reply.value.subarray(0, 12).toString('hex') === markerHex) read++;
        reply.value.fill(0);
      }),
    );
  }
  assert.equal(read, VALUES, 'every value read back');
  // Not vacuous: a buffer holding the marker is found while one is alive.
  const probe = Buffer.alloc(16);
  probe.write(markerHex, 0, 'hex');
  assert.ok((await liveBuffersHolding(markerHex)).length >= 1, 'the search finds a live value');
  probe.fill(0);
  // A reply still being written may hold its value for a moment: held means still held a second later.
  let holding: string[] = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    holding = await liveBuffersHolding(markerHex);
    if (holding.length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  assert.deepEqual(holding, [], 'no live buffer holds a value');
});
