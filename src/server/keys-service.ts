import type * as grpc from '@grpc/grpc-js';
import { parseUnlockKey } from '../crypto/unlock-key.ts';
import {
  ClusterState,
  KEY_SCHEDULE_PERIOD_MAX_MS,
  KEY_SCHEDULE_PERIOD_MIN_MS,
  isKeySchedulePeriod,
} from '../state/cluster-state.ts';
import { refuse } from './errors.ts';
import { nextScheduledRotationAtMs } from './key-schedule.ts';
import type { KeyOperation } from '../manager/manager.ts';
import type { KeyOperationDone } from '../manager/proposer.ts';
import type { ServiceContext } from './context.ts';
import { authorize, unary, type Call } from './rpc.ts';

/** The write path for keyring operations (Proposer.keyOperation). */
export interface KeyOperations {
  keyOperation(operation: KeyOperation): Promise<KeyOperationDone>;
}

/**
 * Keyring operations for operators: `sudo` on sys/keys (status: `admin`). The manager asked seals the operation; the leader proposes it
 * (a follower forwards it), and the reply comes once the leader has applied it. A refusal (say,
 * destroying a term that a rewrap has not yet replaced) is FAILED_PRECONDITION with the reason.
 * Schedule replicates the data key's rotation schedule, which the leader keeps (key-schedule.ts).
 */
export function keysService(ctx: ServiceContext, keys: KeyOperations): grpc.UntypedServiceImplementation {
  const run = async (op: KeyOperation): Promise<{ detail: string; activeTerm: number }> => {
    if (ctx.replica.locked) throw refuse('MANAGER_LOCKED', 'this manager is locked');
    const { detail } = await keys.keyOperation(op);
    // The leader applied it; this manager (a follower, maybe) catches up before it answers.
    await ctx.readPoint();
    return { detail, activeTerm: ctx.replica.status().keys?.activeTerm ?? 0 };
  };
  const op = (method: string, make: (call: Call<{ term?: number }>) => KeyOperation) =>
    unary(ctx, `Keys.${method}`, async (call: Call<{ term?: number }>) => {
      authorize(ctx, call, 'sudo', 'sys/keys');
      return run(make(call));
    });
  return {
    rotate: op('Rotate', () => ({ op: 'rotate' })),
    rewrap: op('Rewrap', () => ({ op: 'rewrap' })),
    rotateRoot: op('RotateRoot', () => ({ op: 'rotate-root' })),
    autolockOff: op('AutolockOff', () => ({ op: 'autolock-off' })),
    destroy: op('Destroy', (call) => {
      const term = call.request.term ?? 0;
      if (!(term > 0)) throw refuse('INVALID_ARGUMENT', 'term names the data key to destroy (see coffer key status)');
      return { op: 'destroy', term };
    }),
    rotateUnlock: unary(ctx, 'Keys.RotateUnlock', async (call: Call<{ unlockKey?: string }>) => {
      authorize(ctx, call, 'sudo', 'sys/keys');
      const unlockKey = call.request.unlockKey ?? '';
      try {
        parseUnlockKey(unlockKey);
      } catch (error) {
        throw refuse(
          'INVALID_ARGUMENT',
          `unlock_key: ${(error as Error).message} (coffer key rotate-unlock makes one)`,
        );
      }
      const { detail } = await run({ op: 'rotate-unlock', unlockKey });
      return { detail };
    }),
    rotateRecovery: unary(ctx, 'Keys.RotateRecovery', async (call: Call<{ publicKey?: Buffer }>) => {
      authorize(ctx, call, 'sudo', 'sys/keys');
      const publicKey = call.request.publicKey ?? Buffer.alloc(0);
      if (publicKey.byteLength !== 32)
        throw refuse(
          'INVALID_ARGUMENT',
          'public_key is the 32-byte X25519 public half of the new recovery key (coffer key rotate-recovery makes the pair)',
        );
      await ctx.propose(ClusterState.encode({ kind: 'cluster.recovery-key', publicKey }));
      return {};
    }),
    schedule: unary(ctx, 'Keys.Schedule', async (call: Call<{ periodMs?: number; off?: boolean }>) => {
      authorize(ctx, call, 'sudo', 'sys/keys');
      const periodMs = schedulePeriodOf(call.request);
      if (ctx.replica.locked) throw refuse('MANAGER_LOCKED', 'this manager is locked');
      await ctx.propose(ClusterState.encode({ kind: 'cluster.key-schedule', periodMs }));
      // Applied on the leader; this manager catches up before it answers.
      await ctx.readPoint();
      const activeCreatedAtMs = ctx.replica.status().keys?.activeCreatedAtMs ?? 0;
      const applied = ctx.state.cluster.keySchedulePeriodMs;
      return { periodMs: applied ?? 0, nextRotationAtMs: nextScheduledRotationAtMs(applied, activeCreatedAtMs) };
    }),
    status: unary(ctx, 'Keys.Status', async (call: Call<object>) => {
      authorize(ctx, call, 'admin', 'sys/keys');
      const status = ctx.replica.status();
      if (status.keys === null) throw refuse('MANAGER_LOCKED', 'this manager is locked');
      return {
        activeTerm: status.keys.activeTerm,
        activeCreatedAtMs: status.keys.activeCreatedAtMs,
        terms: status.keys.terms.filter((t) => !t.destroyed).map((t) => t.term),
        destroyedTerms: status.keys.terms.filter((t) => t.destroyed).map((t) => t.term),
        rootGeneration: status.keys.rootGen,
        unlockGeneration: status.keys.unlockGen,
        protection: status.keyStore.protection,
        lastRewrapIndex: status.keys.lastRewrap?.index ?? 0,
        lastRewrapTerm: status.keys.lastRewrap?.term ?? 0,
        hasRecoveryKey: ctx.state.cluster.recoveryPublicKey !== null,
        recordsByTerm: await ctx.state.secrets.termsInUse(),
        schedulePeriodMs: ctx.state.cluster.keySchedulePeriodMs ?? 0,
        nextRotationAtMs: nextScheduledRotationAtMs(
          ctx.state.cluster.keySchedulePeriodMs,
          status.keys.activeCreatedAtMs,
        ),
      };
    }),
  };
}

const HOUR_MS = 60 * 60_000;
const DAY_MS = 24 * HOUR_MS;

/** The period a Keys.Schedule request asks for (null: off), or INVALID_ARGUMENT saying what is allowed. */
function schedulePeriodOf(request: { periodMs?: number; off?: boolean }): number | null {
  const periodMs = request.periodMs ?? 0;
  if (request.off === true) {
    if (periodMs !== 0)
      throw refuse('INVALID_ARGUMENT', 'period_ms: give a period or off, not both', { field: 'period_ms' });
    return null;
  }
  if (!isKeySchedulePeriod(periodMs))
    throw refuse(
      'INVALID_ARGUMENT',
      `period_ms: the data key's rotation period is at least ${KEY_SCHEDULE_PERIOD_MIN_MS / HOUR_MS} h and at most ${KEY_SCHEDULE_PERIOD_MAX_MS / DAY_MS} d (${KEY_SCHEDULE_PERIOD_MIN_MS} to ${KEY_SCHEDULE_PERIOD_MAX_MS} ms), got ${periodMs} ms; off turns the schedule off`,
      { field: 'period_ms' },
    );
  return periodMs;
}
