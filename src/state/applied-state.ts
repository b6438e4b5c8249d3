import type { InnerStateMachine } from '../barrier/barrier.ts';
import { ClusterState, type ClusterResult } from './cluster-state.ts';
import { packr } from '../codec/msgpack.ts';
import { packLarge } from '../codec/pack-large.ts';
import { AccessState, type AccessResult } from './access-state.ts';
import { accessGuard } from './access-guard.ts';
import { SecretStore, decodeSecretCommand, type StoreResult } from './secret-store.ts';


export type AppliedResult = ClusterResult | StoreResult | AccessResult;

/** What a manager replicates behind the barrier: cluster facts and secrets, in one image. */
export class AppliedState implements InnerStateMachine<AppliedResult> {
  readonly cluster = new ClusterState();
  readonly secrets = new SecretStore();
  readonly access = new AccessState(accessGuard);

  apply(command: { index: number; kind: string; data: Buffer }): AppliedResult {
    if (command.kind.startsWith('cluster.')) {
      const result = this.cluster.apply(command.kind, command.data);
      // Identities' keys certified by a retired CA go with it, at the same index.
      if (result.ok && command.kind === 'cluster.ca-retire') this.access.retireCaGeneration((this.cluster.cas[0]?.gen ?? 1) - 1);
      return result;
    }
    if (command.kind.startsWith('secret.')) return this.#applySecretCommand(command.kind, command.data);
    if (command.kind.startsWith('access.')) return this.access.apply(command.kind, command.data);
    return { ok: false, reason: `unknown command kind ${command.kind}` };
  }

  /**
   * A client's command is authorized again where it applies: the manager that took it may have
   * been behind (a revocation or a policy change already committed), and every manager must reach
   * the same verdict, so the check reads only replicated state.
   */
  #applySecretCommand(kind: string, data: Buffer): AppliedResult {
    const decoded = decodeSecretCommand(kind, data);
    if (typeof decoded === 'string') return { ok: false, code: 'INVALID', reason: decoded };
    const { command, actor } = decoded;
    const needed = this.secrets.requiredCapabilities(command);
    if (actor !== null && needed !== null) {
      if (!this.access.certificateValid(actor.name, actor.key)) return { ok: false, code: 'DENIED', reason: `the certificate of identity "${actor.name}" was revoked before this write applied` };
      for (const capability of needed.capabilities) {
        if (!this.access.decide(actor.name, capability, needed.name).allowed) return { ok: false, code: 'DENIED', reason: `identity "${actor.name}" may not ${capability} "${needed.name}"` };
      }
    }
    return this.secrets.applyCommand(command, actor);
  }

  snapshot(): Uint8Array {
    return packLarge(packr, [1, this.cluster.snapshot(), this.secrets.snapshot(), this.access.snapshot()]);
  }

  restore(data: Uint8Array): void {
    const [version, cluster, secrets, access] = packr.unpack(data) as [number, unknown, unknown, unknown];
    if (version !== 1) throw new Error(`unknown state image version ${version}`);
    this.cluster.restore(cluster);
    this.secrets.restore(secrets);
    this.access.restore(access);
  }
}
