import type { AccessCommand, Actor } from '../../src/state/access-state.ts';
import type { ClusterCommand } from '../../src/state/cluster-state.ts';
import type { PolicyRule } from '../../src/state/policy.ts';
import type { SecretCommand } from '../../src/state/secret-store.ts';
import type { SeededRandom } from '../../src/util/prng.ts';

/**
 * Random commands for every part of the applied state, drawn from small pools of names, ids and
 * keys so that they run into each other: most apply, many are refused by the state they meet
 * (a stale cas, a revoked certificate, a CA generation out of turn, a policy the actor does not
 * hold), and a few carry an actor whose key was never issued.
 */
export type RandomCommand =
  | { readonly prefix: 'cluster.'; readonly command: ClusterCommand; readonly actor: null }
  | { readonly prefix: 'secret.'; readonly command: SecretCommand; readonly actor: Actor | null }
  | { readonly prefix: 'access.'; readonly command: AccessCommand; readonly actor: Actor | null };

export const T0 = 1_700_000_000_000;
const hex = (n: number, bytes: number): string => n.toString(16).padStart(2, '0').repeat(bytes);
const IDENTITIES = ['admin', 'ci', 'ops', 'team-lead'] as const;
const keyOf = (name: string, gen = 0): string =>
  hex(IDENTITIES.indexOf(name as (typeof IDENTITIES)[number]) * 16 + gen + 1, 32);
const POLICIES = ['readers', 'writers', 'team-admin', 'root', 'missing'] as const;
const SECRETS = ['app/a', 'app/b', 'team/c', 'prod/d'] as const;
/** Versions of each secret an expiry sweep names (a run of 600 commands makes fewer per secret). */
const EXPIRE_TARGET_VERSIONS = 200;
const PATHS = [
  'app/**',
  'team/**',
  'prod/*',
  '**',
  'sys/policies/team-*',
  'sys/identities/*',
  'sys/policies/*',
] as const;
const CAPS = ['read', 'write', 'list', 'delete', 'admin'] as const;

export function randomCommand(random: SeededRandom, step: number): RandomCommand {
  const pick = <T>(items: readonly T[]): T => items[random.int(items.length)]!;
  const nowMs = T0 + step * 1000;
  const roll = random.float();
  if (roll < 0.3) return { prefix: 'cluster.', command: randomClusterCommand(random, pick, nowMs), actor: null };
  const actor = (): Actor | null => {
    if (random.float() < 0.45) return null;
    const name = pick(IDENTITIES);
    return { name, key: keyOf(name, random.float() < 0.1 ? 9 : random.int(2)) };
  };
  if (roll < 0.65) return { prefix: 'secret.', command: randomSecretCommand(random, pick, nowMs), actor: actor() };
  return { prefix: 'access.', command: randomAccessCommand(random, pick, nowMs), actor: actor() };
}

type Pick = <T>(items: readonly T[]) => T;

function randomClusterCommand(random: SeededRandom, pick: Pick, nowMs: number): ClusterCommand {
  const id = 1 + random.int(5);
  const memberKey = { key: hex(0x40 + random.int(6), 32), caGen: 1 + random.int(3) };
  const tokenHash = (): Buffer => Buffer.alloc(32, 1 + random.int(2));
  const kinds: Array<() => ClusterCommand> = [
    () =>
      random.float() < 0.5
        ? { kind: 'cluster.member', id, address: `m${id}:7000` }
        : { kind: 'cluster.member', id, address: `m${id}:7000`, key: memberKey },
    () => ({ kind: 'cluster.member-key', id, key: memberKey }),
    () => ({ kind: 'cluster.ca-install', certPem: `cert-${random.int(3)}`, keyPem: 'key' }),
    () => ({
      kind: 'cluster.ca-add',
      ca: { gen: 1 + random.int(4), certPem: 'cert', keyPem: 'key', crossPem: 'cross' },
    }),
    () => ({ kind: 'cluster.ca-retire', gen: 1 + random.int(3) }),
    () => ({
      kind: 'cluster.audit-anchor',
      id,
      seq: random.int(20),
      hash: hex(random.int(256), 32),
      reset: random.float() < 0.2,
    }),
    () => ({ kind: 'cluster.removed', id: 4 + random.int(3) }),
    () => ({
      kind: 'cluster.join-token',
      hash: tokenHash(),
      expiresAtMs: random.float() < 0.5 ? null : nowMs + random.int(5) * 1000,
      uses: random.float() < 0.5 ? null : 1 + random.int(2),
    }),
    () => ({ kind: 'cluster.join', tokenHash: tokenHash(), nowMs, id, address: `m${id}:7000`, key: memberKey }),
    () => ({ kind: 'cluster.hold-learner', id, held: random.float() < 0.5 }),
    () => ({ kind: 'cluster.recovery-key', publicKey: Buffer.alloc(32, random.int(256)) }),
  ];
  return pick(kinds)();
}

function randomSecretCommand(random: SeededRandom, pick: Pick, nowMs: number): SecretCommand {
  const name = pick(SECRETS);
  const version = 1 + random.int(4);
  switch (random.int(8)) {
    case 0:
    case 1:
    case 2:
      return {
        op: 'put',
        name,
        value: Buffer.from(`v${random.int(1000)}`),
        cas: random.float() < 0.7 ? null : random.int(4),
        expireAtMs: random.float() < 0.8 ? null : nowMs + random.int(4) * 1000,
        versionsKept: random.float() < 0.7 ? null : 1 + random.int(3),
        nowMs,
      };
    case 3:
      return { op: random.float() < 0.6 ? 'delete' : 'undelete', name };
    case 4:
      return { op: 'destroy', name, versions: random.float() < 0.7 ? [version] : [version, version + 1] };
    case 5:
      return { op: 'label', name, label: pick(['pinned', 'current', 'stable']), version };
    case 6:
      return { op: 'unlabel', name, label: pick(['pinned', 'previous', 'stable']) };
    default:
      // The leader names what it found expired; here, every version a run makes (each checked where it applies).
      return {
        op: 'expire',
        nowMs,
        targets: SECRETS.flatMap((secret) =>
          Array.from({ length: EXPIRE_TARGET_VERSIONS }, (_, v) => [secret, v + 1] as [string, number]),
        ),
      };
  }
}

function randomAccessCommand(random: SeededRandom, pick: Pick, nowMs: number): AccessCommand {
  const rule = (): PolicyRule => ({
    path: pick(PATHS),
    capabilities: [...new Set([pick(CAPS), pick(CAPS)])],
    deny: random.float() < 0.15,
  });
  const identity = pick(IDENTITIES);
  const serial = hex(random.int(256), 2);
  switch (random.int(6)) {
    case 0:
    case 1:
      return {
        op: 'policy-put',
        name: pick(POLICIES.filter((p) => p !== 'root')),
        rules: Array.from({ length: 1 + random.int(3) }, rule),
      };
    case 2:
      return { op: 'policy-remove', name: pick(POLICIES) };
    case 3: {
      const policies = [...new Set(Array.from({ length: random.int(3) }, () => pick(POLICIES)))];
      const command = {
        op: 'identity-issue',
        name: identity,
        policies,
        key: keyOf(identity, random.int(2)),
        serial,
        caGen: 1 + random.int(2),
        nowMs,
      } as const;
      return random.float() < 0.3 ? { ...command, reissue: true } : command;
    }
    case 4:
      return {
        op: 'identity-renew',
        name: identity,
        key: keyOf(identity, random.int(2)),
        serial,
        caGen: 1 + random.int(2),
        nowMs,
      };
    default:
      return { op: 'identity-revoke', name: identity };
  }
}
