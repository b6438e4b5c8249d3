import type { InnerStateMachine } from '../barrier/barrier.ts';
import { ClusterState, type ClusterResult } from '../cluster/cluster-state.ts';
import { Packr } from 'msgpackr';
import { SecretStore, type StoreResult } from './secret-store.ts';

const statePackr = new Packr({ useRecords: false, moreTypes: false });

export type ManagerStateResult = ClusterResult | StoreResult;

/** What a manager replicates behind the barrier: cluster facts and secrets, in one image. */
export class ManagerState implements InnerStateMachine<ManagerStateResult> {
  readonly cluster = new ClusterState();
  readonly secrets = new SecretStore();

  apply(command: { index: number; kind: string; data: Buffer }): ManagerStateResult {
    if (command.kind.startsWith('cluster.')) return this.cluster.apply(command.kind, command.data);
    if (command.kind.startsWith('secret.')) return this.secrets.apply(command.kind, command.data);
    return { ok: false, reason: `unknown command kind ${command.kind}` };
  }

  snapshot(): Uint8Array {
    return statePackr.pack([1, this.cluster.snapshot(), this.secrets.snapshot()]);
  }

  restore(data: Uint8Array): void {
    const [version, cluster, secrets] = statePackr.unpack(data) as [number, unknown, unknown];
    if (version !== 1) throw new Error(`unknown state image version ${version}`);
    this.cluster.restore(cluster);
    this.secrets.restore(secrets);
  }
}
