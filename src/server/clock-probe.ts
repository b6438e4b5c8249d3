import type * as grpc from '@grpc/grpc-js';
import type { NodeId } from '../raft/types.ts';
import type { Logger } from '../util/logger.ts';
import { CLOCK_OFFSET_WARN_MS, CLOCK_PROBE_INTERVAL_MS, type ClusterClock } from './cluster-clock.ts';

type ClockStub = {
  clock(
    request: object,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { wallMs: number }) => void,
  ): void;
};

/**
 * Asks every other member for its wall clock (Peer.Clock), at most one question in flight per
 * member, and records each answer in the cluster clock; members no longer in the configuration
 * are forgotten. A member that does not answer simply has no fresh sample.
 */
export class ClockProbe {
  readonly #inFlight = new Set<NodeId>();
  readonly #known = new Set<NodeId>();
  #warned = false;

  constructor(
    private readonly options: {
      readonly clock: ClusterClock;
      readonly selfId: NodeId;
      /** Voters and learners now. */
      readonly members: () => readonly NodeId[];
      readonly client: (member: NodeId) => grpc.Client;
      readonly log: Logger;
    },
  ) {}

  round(): void {
    const { clock, selfId, log } = this.options;
    const offsetMs = clock.offsetMs();
    if (Math.abs(offsetMs) >= CLOCK_OFFSET_WARN_MS && !this.#warned) {
      this.#warned = true;
      log.warn(
        { event: 'clock-offset', offsetMs, members: clock.view().members },
        `this host's clock is ${Math.abs(offsetMs / 1000).toFixed(1)} s ${offsetMs > 0 ? 'behind' : 'ahead of'} the cluster's time (the median of the members' clocks): the manager goes by the cluster's time; fix the host's time source (NTP)`,
      );
    } else if (Math.abs(offsetMs) < CLOCK_OFFSET_WARN_MS / 2 && this.#warned) {
      this.#warned = false;
      log.info({ event: 'clock-offset', offsetMs }, "this host's clock is in step with the cluster's time again");
    }
    const members = new Set(this.options.members().filter((id) => id !== selfId));
    for (const id of this.#known)
      if (!members.has(id)) {
        this.#known.delete(id);
        clock.forget(id);
      }
    for (const id of members) {
      if (this.#inFlight.has(id)) continue;
      let stub: ClockStub;
      try {
        stub = this.options.client(id) as unknown as ClockStub;
      } catch {
        continue; // no address known yet
      }
      this.#known.add(id);
      this.#inFlight.add(id);
      const startedMs = performance.now();
      stub.clock({}, { deadline: Date.now() + CLOCK_PROBE_INTERVAL_MS }, (error, response) => {
        this.#inFlight.delete(id);
        if (error !== null || response === undefined || !Number.isFinite(response.wallMs) || response.wallMs <= 0)
          return;
        clock.record(id, startedMs, response.wallMs, performance.now() - startedMs);
      });
    }
  }
}
