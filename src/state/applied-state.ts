import type { InnerStateMachine } from '../barrier/barrier.ts';
import { packr } from '../codec/msgpack.ts';
import { packLarge } from '../codec/pack-large.ts';
import { AccessState, type AccessApplied, type AccessResult } from './access-state.ts';
import { accessGuard } from './access-guard.ts';
import { ClusterState, type ClusterApplied, type ClusterResult } from './cluster-state.ts';
import { SecretStore, type SecretApplied, type SecretResult } from './secret-store.ts';
import { refusal, type PartPrefix, type StatePart } from './state-part.ts';

/** What applying a command returns: the part's own success shape, or a refusal (the same shape from every part). */
export type AppliedResult = ClusterResult | SecretResult | AccessResult;

/** Any part of the applied state, whatever its commands (what AppliedState's table holds). */
export type AnyStatePart = StatePart<unknown, ClusterApplied | SecretApplied | AccessApplied>;

/** The version of the image `snapshot` writes: `[1, cluster image, secrets image, access image]`. */
const IMAGE_VERSION = 1;

/**
 * What a manager replicates behind the barrier: cluster facts, secrets and who may do what, in
 * one image. Each part implements the StatePart contract; this class routes each command to the
 * part its kind's prefix names, and has a command that names a client authorized (by its part,
 * against the access part: certificates and policies) before it applies.
 */
export class AppliedState implements InnerStateMachine<AppliedResult> {
  readonly access = new AccessState(accessGuard);
  // Identities' keys certified by a retired CA go with it, at the same index.
  readonly cluster = new ClusterState({ onCaRetired: (gen) => this.access.retireCaGeneration(gen) });
  readonly secrets = new SecretStore();
  /** The parts, in the order of their images in the state image (do not reorder: backups would not restore). */
  readonly parts: readonly AnyStatePart[] = [this.cluster, this.secrets, this.access];
  readonly #partsByPrefix = new Map<string, AnyStatePart>(this.parts.map((part) => [part.prefix, part]));

  /** The part whose commands' kinds start as `kind` does (`secret.put`: the secrets), or undefined. */
  partOf(kind: string): AnyStatePart | undefined {
    return this.#partsByPrefix.get(kind.slice(0, kind.indexOf('.') + 1) as PartPrefix);
  }

  apply(command: { readonly index: number; readonly kind: string; readonly data: Uint8Array }): AppliedResult {
    const part = this.partOf(command.kind);
    if (part === undefined) return refusal('INVALID', `unknown command kind ${command.kind.slice(0, 60)}`);
    const decoded = part.decode(command.kind, command.data);
    if (!decoded.ok) return decoded;
    const { actor } = decoded;
    if (actor !== null) {
      // A client's command is authorized again where it applies: the manager that took it may
      // have been behind (a revocation or a policy change already committed), and every manager
      // must reach the same verdict, so the check reads only replicated state.
      const refused = part.authorize(decoded.command, actor, this.access);
      if (refused !== null) return refused;
    }
    return part.apply(decoded.command, actor);
  }

  snapshot(): Uint8Array {
    return packLarge(packr, [IMAGE_VERSION, ...this.parts.map((part) => part.snapshot())]);
  }

  restore(data: Uint8Array): void {
    const image: unknown = packr.unpack(data);
    const version: unknown = Array.isArray(image) ? image[0] : undefined;
    if (version !== IMAGE_VERSION) throw new Error(`unknown state image version ${String(version)}`);
    const partImages = (image as unknown[]).slice(1);
    if (partImages.length < this.parts.length)
      throw new Error(
        `a state image of version ${IMAGE_VERSION} holds ${this.parts.length} parts, this one ${partImages.length}`,
      );
    for (const [k, part] of this.parts.entries()) part.restore(partImages[k]);
  }
}
