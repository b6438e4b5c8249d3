import type { InnerStateMachine } from '../barrier/barrier.ts';
import { ClusterState, type ClusterResult } from '../cluster/cluster-state.ts';
import { Packr } from 'msgpackr';
import { AccessState, type AccessResult } from './access-state.ts';
import { SecretStore, type StoreResult } from './secret-store.ts';

const statePackr = new Packr({ useRecords: false, moreTypes: false });

export type ManagerStateResult = ClusterResult | StoreResult | AccessResult;

/** What a manager replicates behind the barrier: cluster facts and secrets, in one image. */
export class ManagerState implements InnerStateMachine<ManagerStateResult> {
  readonly cluster = new ClusterState();
  readonly secrets = new SecretStore();
  readonly access = new AccessState();

  apply(command: { index: number; kind: string; data: Buffer }): ManagerStateResult {
    if (command.kind.startsWith('cluster.')) return this.cluster.apply(command.kind, command.data);
    if (command.kind.startsWith('secret.')) return this.secrets.apply(command.kind, command.data);
    if (command.kind.startsWith('access.')) return this.access.apply(command.kind, command.data);
    return { ok: false, reason: `unknown command kind ${command.kind}` };
  }

  snapshot(): Uint8Array {
    return statePackr.pack([1, this.cluster.snapshot(), this.secrets.snapshot(), this.access.snapshot()]);
  }

  restore(data: Uint8Array): void {
    const [version, cluster, secrets, access] = statePackr.unpack(data) as [number, unknown, unknown, unknown];
    if (version !== 1) throw new Error(`unknown state image version ${version}`);
    this.cluster.restore(cluster);
    this.secrets.restore(secrets);
    this.access.restore(access);
  }
}
