import { testRecordKeys } from './stores.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { packr } from '../../src/codec/msgpack.ts';
import { AppliedState, type AppliedResult, type AnyStatePart } from '../../src/state/applied-state.ts';
import { REFUSAL_CODES, REFUSAL_REASON_CODES } from '../../src/state/state-part.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { randomCommand, type RandomCommand } from './random-commands.ts';

/**
 * The contract every part of the applied state keeps (src/state/state-part.ts), checked on each
 * part of AppliedState's table, whatever it is: it decodes what it encodes, refuses garbage with
 * INVALID without throwing, restores its own image to an equal image, and applies deterministically.
 */

const SEEDS = [11, 12, 13, 14];
/** One set of record keys for every state here: their images are compared byte for byte. */
const KEYS = testRecordKeys();
const STEPS = 500;

function commands(seed: number, steps = STEPS): RandomCommand[] {
  const random = new SeededRandom(seed);
  return Array.from({ length: steps }, (_, step) => randomCommand(random, step));
}

function encoded(state: AppliedState, c: RandomCommand): { kind: string; data: Buffer } {
  const part = state.partOf(c.prefix);
  assert.ok(part !== undefined, `a part for ${c.prefix}`);
  return part.encode(c.command, c.actor);
}

/** Applies a command as a manager does; applying never throws, whatever the command. */
function applyAt(state: AppliedState, index: number, command: { kind: string; data: Buffer }): AppliedResult {
  return state.apply({ index, kind: command.kind, data: command.data });
}

function assertResultShape(result: AppliedResult, what: string): void {
  if (result.ok) return;
  assert.ok(REFUSAL_CODES.includes(result.code), `${what}: refusal code ${String(result.code)} is one of RefusalCode`);
  assert.equal(typeof result.reason, 'string', `${what}: a refusal says why`);
  assert.ok(result.reason.length > 0, `${what}: a refusal says why`);
  assert.deepEqual(
    Object.keys(result)
      .filter((k) => k !== 'reasonCode' && k !== 'metadata')
      .sort(),
    ['code', 'ok', 'reason'],
    `${what}: a refusal is {ok, code, reason, reasonCode?, metadata?}, the same from every part`,
  );
  if (result.reasonCode !== undefined)
    assert.equal(
      REFUSAL_REASON_CODES[result.reasonCode],
      result.code,
      `${what}: its finer reason is one of its code's`,
    );
  if (result.metadata !== undefined)
    for (const [key, value] of Object.entries(result.metadata))
      assert.ok(/^[a-z][a-zA-Z0-9]*$/.test(key) && typeof value === 'string', `${what}: metadata ${key}`);
}

test('the table: one part per prefix, cluster, secrets and access, in image order', () => {
  const state = new AppliedState({ keys: KEYS });
  assert.deepEqual(
    state.parts.map((p) => p.prefix),
    ['cluster.', 'secret.', 'access.'],
  );
  assert.equal(state.partOf('cluster.member'), state.cluster);
  assert.equal(state.partOf('secret.put'), state.secrets);
  assert.equal(state.partOf('access.policy-put'), state.access);
  for (const kind of ['kv.put', 'secret', 'secrets.put', '', '.put', 'cluster'])
    assert.equal(state.partOf(kind), undefined, kind);
});

test('every part decodes what it encodes: the same command, the same actor', () => {
  const state = new AppliedState({ keys: KEYS });
  const kinds = new Map<string, Set<string>>(state.parts.map((p) => [p.prefix, new Set()]));
  for (const seed of SEEDS) {
    for (const c of commands(seed)) {
      const part = state.partOf(c.prefix)!;
      const { kind, data } = part.encode(c.command, c.actor);
      assert.ok(kind.startsWith(part.prefix), `${kind} starts with ${part.prefix}`);
      kinds.get(part.prefix)!.add(kind);
      assert.deepEqual(part.decode(kind, data), { ok: true, command: c.command, actor: c.actor }, kind);
    }
  }
  // Not vacuous: every kind of every part was tried.
  assert.equal(kinds.get('cluster.')!.size, 11);
  assert.equal(kinds.get('secret.')!.size, 7);
  assert.equal(kinds.get('access.')!.size, 5);
});

test('every part refuses garbage with INVALID and never throws; through AppliedState it changes nothing', async () => {
  const state = new AppliedState({ keys: KEYS });
  let index = 0;
  // A state with something in every part, so garbage could have something to break.
  for (const c of commands(SEEDS[0]!)) applyAt(state, ++index, encoded(state, c));
  const image = Buffer.from(await state.snapshot());
  const random = new SeededRandom(99);
  const samples = new Map<string, { kind: string; data: Buffer }>();
  // The last of each kind, but a member with a key (the fuller form) where there is one.
  for (const seed of SEEDS) {
    for (const c of commands(seed)) {
      const sample = encoded(state, c);
      const keyless = c.prefix === 'cluster.' && c.command.kind === 'cluster.member' && c.command.key === undefined;
      if (!(keyless && samples.has(sample.kind))) samples.set(sample.kind, sample);
    }
  }

  const mustRefuse = (part: AnyStatePart, kind: string, data: Uint8Array, what: string): void => {
    let decoded: ReturnType<AnyStatePart['decode']> | undefined;
    assert.doesNotThrow(() => (decoded = part.decode(kind, data)), `${what}: decode threw`);
    assert.equal(decoded!.ok, false, `${what}: accepted ${JSON.stringify(decoded)}`);
    assert.equal(!decoded!.ok && decoded!.code, 'INVALID', what);
    const result = applyAt(state, ++index, { kind, data: Buffer.from(data) });
    assert.equal(!result.ok && result.code, 'INVALID', `${what}: through AppliedState`);
    assertResultShape(result, what);
  };
  /** Random bytes may, rarely, spell a real command: then it must be one (it encodes back to itself). */
  const refuseOrRoundTrip = (part: AnyStatePart, kind: string, data: Uint8Array, what: string): boolean => {
    let decoded: ReturnType<AnyStatePart['decode']> | undefined;
    assert.doesNotThrow(() => (decoded = part.decode(kind, data)), `${what}: decode threw`);
    const d = decoded!;
    if (!d.ok) {
      assert.equal(d.code, 'INVALID', what);
      return true;
    }
    const again = part.encode(d.command, d.actor);
    assert.deepEqual(part.decode(again.kind, again.data), d, `${what}: what garbage decodes to is a command`);
    return false;
  };

  // Each is garbage under every kind (no kind takes a lone string, boolean, list or map as its first field).
  const shapes: unknown[] = [
    null,
    true,
    0,
    -1,
    2 ** 60,
    'x',
    '',
    [],
    [null],
    [[]],
    [0],
    [-1],
    [1.5],
    ['a'],
    [true],
    [{}],
    {},
    { op: null },
    { op: 'put' },
    { op: 'policy-put', name: 7 },
    Buffer.alloc(3),
    { actor: 'x' },
  ];
  for (const part of state.parts) {
    const kindsOfPart = [...samples.keys()].filter((k) => k.startsWith(part.prefix));
    for (const kind of [...kindsOfPart, `${part.prefix}no-such-command`, part.prefix]) {
      mustRefuse(part, kind, Buffer.alloc(0), `${kind}: no bytes`);
      mustRefuse(part, kind, Buffer.from([0xc1]), `${kind}: a byte msgpack never uses`);
      for (const shape of shapes) mustRefuse(part, kind, packr.pack(shape), `${kind}: ${JSON.stringify(shape)}`);
      const sample = samples.get(kind);
      if (sample !== undefined) {
        for (let cut = 0; cut < sample.data.length; cut++)
          mustRefuse(part, kind, sample.data.subarray(0, cut), `${kind}: cut to ${cut} bytes`);
        // Every field of a real command, replaced by a map (a type no field takes), is refused.
        // (`reissue` is read as "true or not", as it always was.)
        const fields = packr.unpack(sample.data) as unknown[] | Record<string, unknown>;
        for (const field of Object.keys(fields)) {
          if (field === 'op' || field === 'reissue') continue;
          const changed: unknown[] | Record<string, unknown> = Array.isArray(fields) ? [...fields] : { ...fields };
          (changed as Record<string, unknown>)[field] = { junk: 1 };
          mustRefuse(part, kind, packr.pack(changed), `${kind}: field ${field} is a map`);
        }
      }
    }
    // Secret and access commands say their operation in the data: under another kind they are refused.
    if (part.prefix !== 'cluster.') {
      for (const [kind, sample] of samples) {
        for (const other of kindsOfPart)
          if (kind.startsWith(part.prefix) && other !== kind)
            mustRefuse(part, other, sample.data, `${kind} data as ${other}`);
      }
    }
    let refused = 0;
    let tries = 0;
    for (const kind of kindsOfPart) {
      const sample = samples.get(kind)!;
      for (let k = 0; k < 200; k++, tries++) {
        const bytes =
          k % 2 === 0
            ? Buffer.from(Array.from({ length: 1 + random.int(40) }, () => random.int(256)))
            : Buffer.from(sample.data);
        if (k % 2 === 1)
          for (let flips = 1 + random.int(3); flips > 0; flips--) bytes[random.int(bytes.length)] = random.int(256);
        if (refuseOrRoundTrip(part, kind, bytes, `${kind}: garbage ${bytes.toString('hex')}`)) refused++;
      }
    }
    assert.ok(refused > tries / 2, `${part.prefix}: most garbage is refused (${refused} of ${tries})`);
  }
  assert.ok(Buffer.from(await state.snapshot()).equals(image), 'refused garbage left the state as it was');
});

test('every part restores its own image to an equal image, at every stage of a random run', async () => {
  for (const seed of SEEDS) {
    const state = new AppliedState({ keys: KEYS });
    let index = 0;
    for (const [step, c] of commands(seed).entries()) {
      applyAt(state, ++index, encoded(state, c));
      if (step % 50 !== 49) continue;
      const copy = new AppliedState({ keys: KEYS });
      for (const [k, part] of state.parts.entries()) {
        const image = await part.snapshot();
        // Images travel as msgpack: restore what came through it, as a follower would.
        await copy.parts[k]!.restore(packr.unpack(packr.pack(image)), index);
        assert.deepEqual(
          await copy.parts[k]!.snapshot(),
          image,
          `seed ${seed}, step ${step}: ${part.prefix} round-trips`,
        );
      }
      assert.ok(
        Buffer.from(await copy.snapshot()).equals(Buffer.from(await state.snapshot())),
        `seed ${seed}, step ${step}: the whole image round-trips`,
      );
    }
  }
});

test('two applied states given the same random commands agree (one of them restored from its own image every 37 commands), and a refused command changes nothing', async () => {
  for (const seed of SEEDS) {
    const run = commands(seed).map((c) => ({
      prefix: c.prefix,
      command: encoded(new AppliedState({ keys: KEYS }), c),
    }));
    const a = new AppliedState({ keys: KEYS });
    const resultsA: AppliedResult[] = [];
    for (const [step, { command }] of run.entries()) {
      const before = Buffer.from(await a.snapshot());
      const result = applyAt(a, step + 1, command);
      if (!result.ok)
        assert.ok(
          Buffer.from(await a.snapshot()).equals(before),
          `seed ${seed}, step ${step}: the refused ${command.kind} (${result.reason}) changed nothing`,
        );
      resultsA.push(result);
    }
    // The other manager applies them later (a clock read while applying would show), as a
    // follower that installs a snapshot now and then instead of applying the entries it covers.
    await new Promise((resolve) => setTimeout(resolve, 5));
    let b = new AppliedState({ keys: KEYS });
    const counts = new Map<string, { ok: number; refused: number }>(
      a.parts.map((p) => [p.prefix, { ok: 0, refused: 0 }]),
    );
    for (const [step, { prefix, command }] of run.entries()) {
      const ra = resultsA[step]!;
      const rb = applyAt(b, step + 1, command);
      assertResultShape(ra, `seed ${seed}, step ${step} (${command.kind})`);
      assert.deepEqual(rb, ra, `seed ${seed}, step ${step}: ${command.kind} has the same verdict on both`);
      const count = counts.get(prefix)!;
      if (ra.ok) count.ok++;
      else count.refused++;
      if (step % 37 === 36) {
        const restored = new AppliedState({ keys: KEYS });
        await restored.restore(await b.snapshot(), step + 1);
        b = restored;
      }
    }
    assert.ok(Buffer.from(await b.snapshot()).equals(Buffer.from(await a.snapshot())), `seed ${seed}: the same image`);
    // Not vacuous: every part applied commands and refused some.
    for (const [prefix, { ok, refused }] of counts)
      assert.ok(ok > 10 && refused > 10, `seed ${seed}: ${prefix} applied ${ok}, refused ${refused}`);
  }
});

test('an image written before the state store (version 1, plaintext rows) converts on restore: the same secrets as the same commands make now', async () => {
  // Made by AppliedState at 007ca17 (before the contract and the state store) from commands(1, 600) of random-commands.ts,
  // whose expiry sweeps then wiped every version expired by their time (now they name the versions).
  const fixture = Buffer.from(
    readFileSync(new URL('./fixtures/applied-state-v1.b64', import.meta.url), 'utf8').replace(/\s/g, ''),
    'base64',
  );
  const restored = new AppliedState({ keys: KEYS });
  await restored.restore(fixture, 600);
  assert.ok(
    restored.cluster.cas.length > 0 && restored.access.identities.size > 0 && (await restored.secrets.count()) > 0,
    'every part holds something',
  );
  const replayed = new AppliedState({ keys: KEYS });
  for (const [step, c] of commands(1, 600).entries()) applyAt(replayed, step + 1, encoded(replayed, c));
  assert.deepEqual(await contentOf(restored), await contentOf(replayed), 'the same secrets, versions and values');
  const image = await restored.snapshot();
  const again = new AppliedState({ keys: KEYS });
  await again.restore(image, 600);
  assert.ok(Buffer.from(await again.snapshot()).equals(Buffer.from(image)), 'the converted state round-trips');
});

/** What a client could read of every secret (metadata, versions, values), with the cluster and access images. */
async function contentOf(state: AppliedState): Promise<unknown> {
  const { secrets } = await state.secrets.list('', '', 10_000, true);
  return {
    cluster: state.cluster.snapshot(),
    access: state.access.snapshot(),
    usage: ['admin', 'ci', 'ops', 'team-lead'].map((who) => state.secrets.usage(who)),
    secrets: secrets
      .map((m) => ({
        m,
        versions: state.secrets.versions(m.name, 0).map((v) => {
          let value: string;
          try {
            value = state.secrets.read(m.name, { version: v.version }, 0).value.toString('hex');
          } catch (error) {
            value = String((error as Error).message);
          }
          return { ...v, value };
        }),
      }))
      .sort((a, b) => (a.m.name < b.m.name ? -1 : 1)),
  };
}
