import type { BarrierResult } from '../barrier/barrier.ts';
import type { ConfChange, NodeId } from '../raft/types.ts';
import type { Logger } from '../util/logger.ts';
import { ManagerError, ProposalRefused } from './errors.ts';
import type { KeyOperation, Manager } from './manager.ts';

/** How long a membership change waits for the previous one to be applied before it is refused. */
export const CONF_CHANGE_WAIT_MS = 3_000;

/**
 * How a manager that does not lead reaches the leader with a proposal it sealed. The server
 * implements it over mutual-TLS gRPC (Peer.Propose); tests of managers in one process call the
 * leader's `Proposer.acceptForwarded` directly. Either way the leader proposes the same bytes.
 */
export interface LeaderLink<Result> {
  proposeSealed(leader: NodeId, payload: Buffer): Promise<BarrierResult<Result>>;
  proposeConfChange(leader: NodeId, change: ConfChange): Promise<void>;
}

/** A state machine's refusal, as the proposer reports it (ProposalRefused, source 'state'). */
export interface StateRefusal {
  readonly code: string;
  readonly reason: string;
  readonly reasonCode?: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface ProposerOptions<Result> {
  readonly manager: Manager<Result>;
  /** Null: this manager proposes only while it leads (a follower's proposal is refused as NOT_LEADER). */
  readonly leader: LeaderLink<Result> | null;
  /** Which results are refusals; the proposer throws them as ProposalRefused (source 'state'). */
  readonly refusalOf?: (result: Result) => StateRefusal | null;
  readonly logger?: Logger;
}

/** What a keyring operation did, once the leader applied it. */
export interface KeyOperationDone {
  readonly op: string;
  readonly detail: string;
}

/**
 * The one write path of a manager. A command is sealed here, under this manager's active data
 * key; the sealed bytes are proposed here if this manager leads, or sent to the leader, which
 * proposes them unchanged; the answer is the leader's once it applied the entry. The outcome is
 * read in one place (`#read`): a result, or a typed refusal (ProposalRefused) that says where it
 * was refused: by the state machine, by the barrier (the entry could not be opened), or a
 * keyring operation that changed nothing.
 */
export class Proposer<Result> {
  readonly #manager: Manager<Result>;
  readonly #leader: LeaderLink<Result> | null;
  readonly #refusalOf: (result: Result) => StateRefusal | null;
  readonly #log: Logger | null;

  constructor(options: ProposerOptions<Result>) {
    this.#manager = options.manager;
    this.#leader = options.leader;
    this.#refusalOf = options.refusalOf ?? (() => null);
    this.#log = options.logger ?? null;
  }

  /**
   * Seals and proposes a command of the inner state machine; its result once the leader applied
   * it. `data` is zeroed once sealed (it may hold a secret's value, packed into msgpackr's shared
   * buffer, which lives on): the caller gives it up.
   */
  async command(kind: string, data: Uint8Array): Promise<Result> {
    // Never the command itself: only its kind and size.
    this.#log?.debug({ event: 'propose', kind, bytes: data.byteLength }, 'proposing a sealed command');
    const payload = await this.#manager.sealCommand(kind, data);
    data.fill(0);
    const outcome = this.#read(await this.#propose(payload), `the ${kind} command`);
    if (outcome.type !== 'applied')
      throw new ProposalRefused('barrier', 'NOT_APPLIED', `the ${kind} command was applied as a keyring operation`);
    return outcome.result;
  }

  /** A keyring operation (rotate, rewrap, destroy, rotate-root, rotate-unlock, autolock-off). */
  async keyOperation(operation: KeyOperation): Promise<KeyOperationDone> {
    const outcome = this.#read(
      await this.#propose(this.#manager.keyOpPayload(operation)),
      `the keyring operation ${operation.op}`,
    );
    if (outcome.type !== 'key-op')
      throw new ProposalRefused(
        'barrier',
        'NOT_APPLIED',
        `the keyring operation ${operation.op} was not applied as one`,
      );
    this.#log?.info({ event: `key-${outcome.op}`, detail: outcome.detail }, 'keyring operation applied');
    return { op: outcome.op, detail: outcome.detail };
  }

  /** A membership change, proposed on the leader; resolves once applied there. */
  /**
   * A membership change through the leader. Raft takes one at a time: refused while the previous
   * one is not applied yet (milliseconds after it committed), which is tried again here for up to
   * CONF_CHANGE_WAIT_MS rather than handed to the caller (the refused change never reached the log).
   */
  async confChange(change: ConfChange): Promise<void> {
    const deadline = performance.now() + CONF_CHANGE_WAIT_MS;
    for (;;) {
      try {
        const lead = this.#leadOrNull();
        if (lead === null) return await this.#manager.proposeConfChange(change);
        return await this.#link().proposeConfChange(lead, change);
      } catch (error) {
        const pending = /is not applied yet/.test((error as Error).message ?? '');
        if (!pending || performance.now() >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  /** On the leader: a payload another manager sealed and forwarded. The outcome goes back to it unread. */
  acceptForwarded(payload: Uint8Array): Promise<BarrierResult<Result>> {
    return this.#manager.proposePayload(payload);
  }

  #propose(payload: Buffer): Promise<BarrierResult<Result>> {
    const lead = this.#leadOrNull();
    if (lead === null) return this.#manager.proposePayload(payload);
    return this.#link().proposeSealed(lead, payload);
  }

  /** Null when this manager leads (propose here); else the leader to forward to. */
  #leadOrNull(): NodeId | null {
    const status = this.#manager.raftStatus();
    if (status === null) throw new ManagerError('MANAGER_LOCKED', 'this manager is locked');
    if (status.role === 'leader' || this.#leader === null) return null;
    if (status.lead === 0) throw new ManagerError('NO_LEADER', 'no leader is known; retry once one is elected');
    return status.lead;
  }

  #link(): LeaderLink<Result> {
    if (this.#leader === null)
      throw new ManagerError('NO_LEADER', 'this manager does not lead and has no link to the leader');
    return this.#leader;
  }

  /** The one reader of what the leader answered. */
  #read(
    outcome: BarrierResult<Result>,
    what: string,
  ): { type: 'applied'; result: Result } | { type: 'key-op'; op: string; detail: string } {
    switch (outcome.type) {
      case 'applied': {
        const refusal = this.#refusalOf(outcome.result);
        if (refusal !== null)
          throw new ProposalRefused('state', refusal.code, refusal.reason, {
            ...(refusal.reasonCode === undefined ? {} : { reasonCode: refusal.reasonCode }),
            ...(refusal.metadata === undefined ? {} : { metadata: refusal.metadata }),
          });
        return outcome;
      }
      case 'key-op':
        if (!outcome.changed) throw new ProposalRefused('key-op', 'NOT_CHANGED', outcome.detail);
        return outcome;
      case 'refused':
        // A keyring operation the barrier refused (destroy before a rewrap) is the operation's refusal.
        throw new ProposalRefused(
          outcome.code === 'KEY_OP_REFUSED' ? 'key-op' : 'barrier',
          outcome.code,
          outcome.message,
        );
      case 'none':
        throw new ProposalRefused('barrier', 'NOT_APPLIED', `${what} was not applied as a command`);
    }
  }
}
