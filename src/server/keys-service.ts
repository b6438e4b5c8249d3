import * as grpc from '@grpc/grpc-js';
import { parseUnlockKey } from '../crypto/unlock-key.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { services } from '../transport/proto.ts';
import { ServiceError } from './errors.ts';
import type { CofferNode } from './node.ts';
import { authorize, unary, type Call } from './rpc.ts';

type KeyOp = Parameters<CofferNode['manager']['keyOpPayload']>[0];

/**
 * Keyring operations for operators: `sudo` on sys/keys (status: `admin`). The manager asked seals the operation; the leader proposes it
 * (a follower forwards it), and the reply comes once the leader has applied it. A refusal (say,
 * destroying a term that a rewrap has not yet replaced) is FAILED_PRECONDITION with the reason.
 */
export function registerKeysService(node: CofferNode): void {
  const { Keys } = services();
  const run = async (op: KeyOp): Promise<{ detail: string; activeTerm: number }> => {
    if (node.manager.locked) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
    const result = await node.proposeSealed(node.manager.keyOpPayload(op));
    if (result.type === 'key-op') {
      if (!result.changed) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.detail);
      node.log.info({ event: `key-${result.op}`, detail: result.detail }, 'keyring operation applied');
      // The leader applied it; this manager (a follower, maybe) catches up before it answers.
      await node.manager.linearizableRead();
      return { detail: result.detail, activeTerm: node.manager.status().keys?.activeTerm ?? 0 };
    }
    throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.type === 'refused' ? result.message : 'the keyring operation was not applied');
  };
  const op = (method: string, make: (call: Call<{ term?: number }>) => KeyOp) =>
    unary(node, `Keys.${method}`, async (call: Call<{ term?: number }>) => {
      authorize(node, call, 'sudo', 'sys/keys');
      return run(make(call));
    });
  node.server.addService(Keys.service, {
    rotate: op('Rotate', () => ({ op: 'rotate' })),
    rewrap: op('Rewrap', () => ({ op: 'rewrap' })),
    rotateRoot: op('RotateRoot', () => ({ op: 'rotate-root' })),
    autolockOff: op('AutolockOff', () => ({ op: 'autolock-off' })),
    destroy: op('Destroy', (call) => {
      const term = call.request.term ?? 0;
      if (!(term > 0)) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'term names the data key to destroy (see coffer key status)');
      return { op: 'destroy', term };
    }),
    rotateUnlock: unary(node, 'Keys.RotateUnlock', async (call: Call<{ unlockKey?: string }>) => {
      authorize(node, call, 'sudo', 'sys/keys');
      const unlockKey = call.request.unlockKey ?? '';
      try {
        parseUnlockKey(unlockKey);
      } catch (error) {
        throw new ServiceError(grpc.status.INVALID_ARGUMENT, `unlock_key: ${(error as Error).message} (coffer key rotate-unlock makes one)`);
      }
      const { detail } = await run({ op: 'rotate-unlock', unlockKey });
      return { detail };
    }),
    rotateRecovery: unary(node, 'Keys.RotateRecovery', async (call: Call<{ publicKey?: Buffer }>) => {
      authorize(node, call, 'sudo', 'sys/keys');
      const publicKey = call.request.publicKey ?? Buffer.alloc(0);
      if (publicKey.byteLength !== 32) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'public_key is the 32-byte X25519 public half of the new recovery key (coffer key rotate-recovery makes the pair)');
      const result = await node.proposeCommand(ClusterState.encode({ kind: 'cluster.recovery-key', publicKey }));
      if (!result.ok) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.reason);
      return {};
    }),
    status: unary(node, 'Keys.Status', async (call: Call<object>) => {
      authorize(node, call, 'admin', 'sys/keys');
      const status = node.manager.status();
      if (status.keys === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
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
        hasRecoveryKey: node.state.cluster.recoveryPublicKey !== null,
      };
    }),
  });
}
