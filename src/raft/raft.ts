import { assert, unreachable } from '../util/assert.ts';
import type { RaftConfig } from './config.ts';
import { RaftError } from './errors.ts';
import { type RaftLog, entryBytes, normalEntryBytes } from './log.ts';
import { Progress, majority, quorumValue } from './progress.ts';
import {
  NONE,
  type AppendMessage,
  type AppendResponseMessage,
  type ConfChange,
  type ConfState,
  type Entry,
  type HardState,
  type HeartbeatMessage,
  type HeartbeatResponseMessage,
  type Message,
  type NodeId,
  type ReadIndexMessage,
  type ReadIndexResponseMessage,
  type ReadRefusal,
  type ReadRefusalReason,
  type ReadState,
  type Role,
  type SnapshotMessage,
  type SoftState,
  type Status,
  type VoteMessage,
} from './types.ts';

/** A read waiting on the leader for a quorum to confirm its leadership (§6.4, ReadIndex). */
interface PendingRead {
  readonly seq: number;
  readonly index: number;
  readonly context: string;
  /** Who asked: this node (a local read state) or a follower (a response message). */
  readonly from: NodeId;
}

type CampaignKind = 'pre-vote' | 'election' | 'transfer';

/**
 * The Raft protocol for one node: a pure state machine. Inputs are `tick()`, `step(message)` and
 * the request methods; outputs accumulate in `messages`, `readStates`, `readRefusals` and the log,
 * and are collected by RawNode into a Ready. No IO, no clocks, no randomness of its own.
 *
 * References are to the Raft paper (Ongaro & Ousterhout, 2014) and Ongaro's thesis (2014).
 */
export class Raft {
  readonly id: NodeId;
  readonly config: RaftConfig;
  readonly log: RaftLog;

  term = 0;
  vote: NodeId = NONE;
  lead: NodeId = NONE;
  role: Role = 'follower';

  readonly voters = new Set<NodeId>();
  readonly learners = new Set<NodeId>();
  /** Leader only: what it knows of each member's log, itself included. */
  readonly progress = new Map<NodeId, Progress>();
  /** Candidates: the answers received in this (pre-)election. */
  readonly votes = new Map<NodeId, boolean>();

  messages: Message[] = [];
  readStates: ReadState[] = [];
  readRefusals: ReadRefusal[] = [];

  electionElapsed = 0;
  heartbeatElapsed = 0;
  randomizedElectionTimeout = 0;

  leadTransferee: NodeId = NONE;
  /** The index of the newest conf change this leader proposed; none may follow until it is applied. */
  pendingConfIndex = 0;
  /** Leader only: bytes proposed in this term and not yet committed. */
  uncommittedBytes = 0;

  /** ReadIndex state (leader only). `readSeq` never goes back, so stale acks can never count. */
  readSeq = 0;
  pendingReads: PendingRead[] = [];
  readonly readAcks = new Map<NodeId, number>();
  /** Reads arrived since the last heartbeat: RawNode sends one heartbeat round for all of them. */
  readHeartbeatPending = false;

  constructor(config: RaftConfig, log: RaftLog, hardState: HardState, confState: ConfState) {
    this.id = config.id;
    this.config = config;
    this.log = log;
    this.term = hardState.term;
    this.vote = hardState.vote;
    for (const id of confState.voters) this.voters.add(id);
    for (const id of confState.learners) this.learners.add(id);
    this.becomeFollower(this.term, NONE);
  }

  /**
   * Until the first tick: a node that starts knows no leader. If every voter restarted at once
   * (a power cut, a redeploy), waiting a randomized election timeout (1 to 2 s at 100 ms ticks)
   * before anyone campaigns only adds to the outage, so at its first tick a voter that has heard
   * no leader yet campaigns in its turn by id, as when a leader's connection breaks. (Not at
   * construction: the membership of a log without a snapshot is known only once its entries are
   * applied.) One that starts into a working cluster costs nothing: its pre-vote is refused by
   * the voters that hear their leader, and the leader's heartbeat finds it.
   */
  #firstTick = true;

  // -------------------------------------------------------------------------------------------
  // Views
  // -------------------------------------------------------------------------------------------

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  softState(): SoftState {
    return { lead: this.lead, role: this.role };
  }

  confState(): ConfState {
    return { voters: [...this.voters].sort((a, b) => a - b), learners: [...this.learners].sort((a, b) => a - b) };
  }

  /** A voter may campaign; learners and nodes outside the membership may not. */
  promotable(): boolean {
    return this.voters.has(this.id);
  }

  status(): Status {
    let progress: Map<NodeId, ReturnType<Progress['status']>> | null = null;
    if (this.role === 'leader') {
      progress = new Map();
      for (const [id, pr] of this.progress) progress.set(id, pr.status());
    }
    return {
      id: this.id,
      role: this.role,
      lead: this.lead,
      term: this.term,
      vote: this.vote,
      commit: this.log.committed,
      applied: this.log.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      confState: this.confState(),
      leadTransferee: this.leadTransferee,
      progress,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Role changes
  // -------------------------------------------------------------------------------------------

  #reset(term: number): void {
    if (this.term !== term) {
      assert(term > this.term, () => `term goes back from ${this.term} to ${term}`);
      this.term = term;
      this.vote = NONE;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.#resetRandomizedElectionTimeout();
    this.leadTransferee = NONE;
    this.votes.clear();
    this.progress.clear();
    this.uncommittedBytes = 0;
    this.#refusePendingReads('leadership-lost');
  }

  #resetRandomizedElectionTimeout(): void {
    const base = this.config.electionTimeoutTicks;
    this.randomizedElectionTimeout = base + this.config.random.int(base);
  }

  becomeFollower(term: number, lead: NodeId): void {
    this.#reset(term);
    this.role = 'follower';
    this.lead = lead;
  }

  /** §9.6 (thesis): ask "would you vote for me?" without disturbing anyone's term. */
  #becomePreCandidate(): void {
    assert(this.role !== 'leader', 'a leader cannot become a pre-candidate');
    this.role = 'pre-candidate';
    this.lead = NONE;
    this.votes.clear();
  }

  #becomeCandidate(): void {
    assert(this.role !== 'leader', 'a leader cannot become a candidate');
    this.#reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  #becomeLeader(): void {
    assert(this.role === 'candidate', () => `only a candidate becomes leader, not a ${this.role}`);
    this.#reset(this.term);
    this.role = 'leader';
    this.lead = this.id;
    const last = this.log.lastIndex();
    for (const id of this.voters) this.progress.set(id, new Progress(last + 1, false, this.config.inflightAppendsMax));
    for (const id of this.learners) this.progress.set(id, new Progress(last + 1, true, this.config.inflightAppendsMax));
    const self = this.progress.get(this.id);
    assert(self !== undefined, 'a leader is a member');
    self.becomeReplicate();
    // The leader counts itself only for what it has persisted: its appends may leave before its
    // own write (thesis §10.2.1), so an unpersisted entry must not count towards a quorum.
    self.match = this.log.stableIndex();
    self.next = last + 1;
    self.recentActive = true;
    this.readAcks.clear();
    // No conf change until everything before (and including) this term's first entry is
    // applied: this closes the single-server membership bug (Ongaro, raft-dev 2015).
    this.pendingConfIndex = last;
    // §5.4.2 / §8: commit an entry of our own term at once, which also commits everything before.
    this.#appendEntries([{ kind: 'normal', term: 0, index: 0, data: new Uint8Array(0) }]);
  }

  // -------------------------------------------------------------------------------------------
  // Time
  // -------------------------------------------------------------------------------------------

  tick(): void {
    if (this.#firstTick) {
      this.#firstTick = false;
      if (this.role === 'follower' && this.lead === NONE && this.promotable()) this.#campaignInTurn(NONE);
    }
    if (this.role === 'leader') this.#tickLeader();
    else this.#tickElection();
  }

  #tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.campaign();
    }
  }

  #tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.config.electionTimeoutTicks) {
      this.electionElapsed = 0;
      if (this.config.checkQuorum && !this.#quorumActive()) {
        // §6.2 (thesis): a leader that cannot hear a quorum may be deposed already; stepping
        // down stops it from serving reads or taking writes it can never commit.
        this.becomeFollower(this.term, NONE);
        return;
      }
      if (this.leadTransferee !== NONE) this.leadTransferee = NONE; // the transfer timed out
    }
    if (this.heartbeatElapsed >= this.config.heartbeatIntervalTicks) {
      this.heartbeatElapsed = 0;
      this.#broadcastHeartbeat(this.pendingReads.length > 0 ? this.readSeq : 0);
    }
  }

  #quorumActive(): boolean {
    let active = 0;
    for (const id of this.voters) {
      const pr = this.progress.get(id);
      if (id === this.id || pr?.recentActive === true) active++;
    }
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      pr.activeLastPeriod = pr.recentActive;
      pr.recentActive = false;
    }
    return active >= majority(this.voters.size);
  }

  // -------------------------------------------------------------------------------------------
  // Elections (§5.2)
  // -------------------------------------------------------------------------------------------

  /** Starts an election now (pre-vote first, when enabled), if this node may. */
  campaign(kind?: CampaignKind): void {
    if (this.role === 'leader' || !this.promotable() || this.#hasUnappliedConfChange()) return;
    const chosen: CampaignKind = kind ?? (this.config.preVote ? 'pre-vote' : 'election');
    if (chosen === 'pre-vote') this.#becomePreCandidate();
    else this.#becomeCandidate();
    const voteTerm = chosen === 'pre-vote' ? this.term + 1 : this.term;
    // Our own vote counts first; a single voter wins at once.
    if (this.#recordVote(this.id, true) === 'won') {
      if (chosen === 'pre-vote') this.campaign('election');
      else this.#becomeLeader();
      return;
    }
    for (const id of this.voters) {
      if (id === this.id) continue;
      const message: VoteMessage = {
        type: chosen === 'pre-vote' ? 'pre-vote' : 'vote',
        from: this.id,
        to: id,
        term: voteTerm,
        lastIndex: this.log.lastIndex(),
        lastTerm: this.log.lastTerm(),
        transfer: chosen === 'transfer',
      };
      this.#send(message);
    }
  }

  /** A node does not campaign while a committed conf change is unapplied: it may not be a voter. */
  #hasUnappliedConfChange(): boolean {
    for (let i = Math.max(this.log.applied + 1, this.log.firstIndex()); i <= this.log.committed; i++) {
      if (this.log.entry(i)?.kind === 'conf-change') return true;
    }
    return false;
  }

  #recordVote(from: NodeId, granted: boolean): 'won' | 'lost' | 'pending' {
    if (!this.votes.has(from)) this.votes.set(from, granted);
    let yes = 0;
    let no = 0;
    for (const id of this.voters) {
      const vote = this.votes.get(id);
      if (vote === true) yes++;
      else if (vote === false) no++;
    }
    const needed = majority(this.voters.size);
    if (yes >= needed) return 'won';
    if (no > this.voters.size - needed) return 'lost';
    return 'pending';
  }

  // -------------------------------------------------------------------------------------------
  // Step: every message from the network enters here
  // -------------------------------------------------------------------------------------------

  step(m: Message): void {
    assert(m.to === this.id, () => `message for ${m.to} stepped into ${this.id}`);
    assert(m.from !== this.id, 'a node does not message itself');
    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'pre-vote') {
        // §6 (thesis), check-quorum lease: while we hear from a leader, ignore candidates, so a
        // node that was cut off cannot depose a healthy leader. A transfer overrides it.
        const inLease =
          this.config.checkQuorum && this.lead !== NONE && this.electionElapsed < this.config.electionTimeoutTicks;
        if (inLease && !m.transfer) return;
      }
      if (m.type === 'pre-vote') {
        // A pre-vote never changes our term.
      } else if (m.type === 'pre-vote-response' && !m.reject) {
        // A granted pre-vote carries the term we would campaign in; we move to it only by winning.
      } else if (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot') {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if ((this.config.checkQuorum || this.config.preVote) && (m.type === 'heartbeat' || m.type === 'append')) {
        // A leader of an older term: possibly one that cannot learn of the newer term any other
        // way (we ignore its votes under the lease). Tell it our term so it steps down.
        this.#send({
          type: 'append-response',
          from: this.id,
          to: m.from,
          term: this.term,
          index: 0,
          reject: false,
          hintIndex: 0,
          hintTerm: 0,
        });
      } else if (m.type === 'pre-vote') {
        this.#send({ type: 'pre-vote-response', from: this.id, to: m.from, term: this.term, reject: true });
      }
      return;
    }

    if (m.type === 'vote' || m.type === 'pre-vote') {
      this.#handleVoteRequest(m);
      return;
    }
    switch (this.role) {
      case 'leader':
        this.#stepLeader(m);
        break;
      case 'candidate':
      case 'pre-candidate':
        this.#stepCandidate(m);
        break;
      case 'follower':
        this.#stepFollower(m);
        break;
      default:
        unreachable(this.role, 'role');
    }
  }

  /** §5.2, §5.4.1: one vote per term, only for a log at least as up to date as ours. */
  #handleVoteRequest(m: VoteMessage): void {
    const canVote =
      this.vote === m.from ||
      (this.vote === NONE && this.lead === NONE) ||
      (m.type === 'pre-vote' && m.term > this.term);
    const responseType = m.type === 'vote' ? 'vote-response' : 'pre-vote-response';
    if (canVote && this.log.isUpToDate(m.lastIndex, m.lastTerm)) {
      // A pre-vote answer carries the candidate's future term, so it can count it.
      this.#send({ type: responseType, from: this.id, to: m.from, term: m.term, reject: false });
      if (m.type === 'vote') {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.#send({ type: responseType, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  #stepFollower(m: Message): void {
    switch (m.type) {
      case 'append':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleAppend(m);
        break;
      case 'heartbeat':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleHeartbeat(m);
        break;
      case 'snapshot':
        this.electionElapsed = 0;
        this.lead = m.from;
        this.#handleSnapshot(m);
        break;
      case 'timeout-now':
        // §3.10 (thesis): the leader hands over; campaign at once, past any lease.
        if (this.promotable()) this.campaign('transfer');
        break;
      case 'read-index':
        this.#send(this.#readRefusalMessage(m, 'no-leader'));
        break;
      case 'read-index-response':
        this.#handleReadIndexResponse(m);
        break;
      default:
        // Responses meant for a leader or candidate we no longer are.
        break;
    }
  }

  #stepCandidate(m: Message): void {
    switch (m.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        // A leader of our term exists (§5.2): stand down and handle it as a follower would.
        this.becomeFollower(m.term, m.from);
        this.#stepFollower(m);
        break;
      case 'vote-response':
      case 'pre-vote-response': {
        const expected = this.role === 'pre-candidate' ? 'pre-vote-response' : 'vote-response';
        if (m.type !== expected) break;
        const outcome = this.#recordVote(m.from, !m.reject);
        if (outcome === 'won') {
          if (this.role === 'pre-candidate') this.campaign('election');
          else {
            this.#becomeLeader();
            this.#broadcastAppend();
          }
        } else if (outcome === 'lost') {
          this.becomeFollower(this.term, NONE);
        }
        break;
      }
      case 'read-index':
      case 'read-index-response':
        this.#stepFollower(m);
        break;
      default:
        // timeout-now is for followers only; the rest answer a leader we are not.
        break;
    }
  }

  #stepLeader(m: Message): void {
    switch (m.type) {
      case 'append':
      case 'heartbeat':
      case 'snapshot':
        // Two leaders in one term: Election Safety (§5.2) is broken. Crash loudly.
        assert(false, () => `leader ${this.id} of term ${this.term} got a ${m.type} from ${m.from} in the same term`);
        break;
      case 'append-response':
        this.#handleAppendResponse(m);
        break;
      case 'heartbeat-response':
        this.#handleHeartbeatResponse(m);
        break;
      case 'read-index':
        this.#handleReadIndexRequest(m.context, m.from);
        break;
      default:
        break;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Log replication, follower side (§5.3)
  // -------------------------------------------------------------------------------------------

  #handleAppend(m: AppendMessage): void {
    if (m.prevIndex < this.log.committed) {
      // Everything up to our commit is known to match; tell the leader where we are.
      this.#sendAppendResponse(m.from, this.log.committed, false, 0, 0);
      return;
    }
    const lastNew = this.log.maybeAppend(m.prevIndex, m.prevTerm, m.commit, m.entries);
    if (lastNew !== null) {
      this.#sendAppendResponse(m.from, lastNew, false, 0, 0);
      return;
    }
    // Fast backtracking: point the leader at our last entry whose term could still match.
    const hint = this.log.findConflictByTerm(Math.min(m.prevIndex, this.log.lastIndex()), m.prevTerm);
    this.#sendAppendResponse(m.from, m.prevIndex, true, hint.index, hint.term);
  }

  #handleHeartbeat(m: HeartbeatMessage): void {
    this.log.commitTo(m.commit);
    const response: HeartbeatResponseMessage = {
      type: 'heartbeat-response',
      from: this.id,
      to: m.from,
      term: this.term,
      readSeq: m.readSeq,
    };
    this.#send(response);
  }

  #handleSnapshot(m: SnapshotMessage): void {
    const { index, term } = m.snapshot.metadata;
    if (index <= this.log.committed) {
      this.#sendAppendResponse(m.from, this.log.committed, false, 0, 0);
      return;
    }
    if (this.log.matchTerm(index, term)) {
      // We already hold the snapshot's last entry: keep our log, just commit up to it.
      this.log.commitTo(index);
      this.#sendAppendResponse(m.from, this.log.committed, false, 0, 0);
      return;
    }
    this.log.restore(m.snapshot);
    this.#applyConfState(m.snapshot.metadata.confState);
    this.#sendAppendResponse(m.from, this.log.lastIndex(), false, 0, 0);
  }

  #applyConfState(confState: ConfState): void {
    this.voters.clear();
    this.learners.clear();
    for (const id of confState.voters) this.voters.add(id);
    for (const id of confState.learners) this.learners.add(id);
  }

  #sendAppendResponse(to: NodeId, index: number, reject: boolean, hintIndex: number, hintTerm: number): void {
    const response: AppendResponseMessage = {
      type: 'append-response',
      from: this.id,
      to,
      term: this.term,
      index,
      reject,
      hintIndex,
      hintTerm,
    };
    this.#send(response);
  }

  // -------------------------------------------------------------------------------------------
  // Log replication, leader side (§5.3, §5.4)
  // -------------------------------------------------------------------------------------------

  /** Appends entries of the current term, numbering them; they become unstable entries. */
  #appendEntries(entries: Entry[]): number {
    let index = this.log.lastIndex();
    const numbered = entries.map((entry) => ({ ...entry, term: this.term, index: ++index }));
    this.log.append(numbered);
    // Counted here and released in #maybeCommit, for every entry of this term alike.
    for (const entry of numbered) this.uncommittedBytes += entryBytes(entry);
    // The leader's own acknowledgement comes once the entries are persisted (onStable).
    return index;
  }

  /**
   * The application persisted the log up to `index` (RawNode.advance). A leader counts itself for
   * it now, not when it appended: its appends may go out before its own write, and only durable
   * copies may form a quorum.
   */
  onStable(index: number): void {
    if (this.role !== 'leader') return;
    const self = this.progress.get(this.id);
    if (self === undefined || !self.maybeUpdate(index)) return;
    if (this.#maybeCommit()) this.#broadcastAppend();
  }

  /**
   * §5.3/§5.4.2: advance commit to the index a quorum of voters holds, but only by counting
   * replicas of an entry of the current term (Figure 8); older entries commit along with it.
   */
  #maybeCommit(): boolean {
    if (this.voters.size === 0) return false;
    const matches: number[] = [];
    for (const id of this.voters) matches.push(this.progress.get(id)?.match ?? 0);
    const index = quorumValue(matches);
    if (index <= this.log.committed || this.log.term(index) !== this.term) return false;
    for (let i = this.log.committed + 1; i <= index; i++) {
      const entry = this.log.entry(i);
      if (entry !== undefined && entry.term === this.term) this.uncommittedBytes -= entryBytes(entry);
    }
    this.uncommittedBytes = Math.max(0, this.uncommittedBytes);
    this.log.commitTo(index);
    return true;
  }

  #broadcastAppend(): void {
    for (const id of this.progress.keys()) if (id !== this.id) this.#maybeSendAppend(id, true);
  }

  #broadcastHeartbeat(readSeq: number): void {
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      // Never tell a follower to commit past what it is known to hold.
      const heartbeat: HeartbeatMessage = {
        type: 'heartbeat',
        from: this.id,
        to: id,
        term: this.term,
        commit: Math.min(pr.match, this.log.committed),
        readSeq,
      };
      this.#send(heartbeat);
    }
  }

  /** Sends what the follower is missing (or a snapshot); returns whether anything was sent. */
  #maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.progress.get(to);
    if (pr === undefined || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined || prevIndex < this.log.firstIndex() - 1) {
      return this.#sendSnapshot(to, pr);
    }
    const entries =
      pr.next <= this.log.lastIndex()
        ? this.log.slice(pr.next, this.log.lastIndex() + 1, this.config.appendBytesMax)
        : [];
    if (entries.length === 0 && !sendIfEmpty) return false;
    const message: AppendMessage = {
      type: 'append',
      from: this.id,
      to,
      term: this.term,
      prevIndex,
      prevTerm,
      entries,
      commit: this.log.committed,
    };
    this.#send(message);
    const last = entries[entries.length - 1];
    if (last !== undefined) pr.sentEntries(last.index);
    else if (pr.state === 'probe') pr.probeSent = true;
    return true;
  }

  #sendSnapshot(to: NodeId, pr: Progress): boolean {
    const snapshot = this.log.snapshot;
    assert(snapshot !== null, 'the log was compacted, so a snapshot must exist');
    if (!pr.recentActive) return false; // do not ship a whole snapshot to a node we cannot hear
    pr.becomeSnapshot(snapshot.metadata.index);
    this.#send({ type: 'snapshot', from: this.id, to, term: this.term, snapshot });
    return true;
  }

  #handleAppendResponse(m: AppendResponseMessage): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.reject) {
      let hint = m.hintIndex;
      if (m.hintTerm > 0) hint = this.log.findConflictByTerm(m.hintIndex, m.hintTerm).index;
      if (pr.maybeDecreaseTo(m.index, hint)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.#maybeSendAppend(m.from, false);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index)) return;
    if (pr.state === 'probe') pr.becomeReplicate();
    else if (pr.state === 'snapshot' && pr.match + 1 >= this.log.firstIndex()) {
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') pr.inflights.freeUpTo(m.index);

    if (this.#maybeCommit()) this.#broadcastAppend();
    else if (wasPaused) this.#maybeSendAppend(m.from, false);
    while (this.#maybeSendAppend(m.from, false)) {
      // Pipeline as far as the window and the log allow.
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.#sendTimeoutNow(m.from);
  }

  #handleHeartbeatResponse(m: HeartbeatResponseMessage): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    pr.probeSent = false;
    // A lost append may have left the window full with nothing coming back: make room for one.
    if (pr.state === 'replicate' && pr.inflights.full()) pr.inflights.freeFirstOne();
    // Behind: send an append even if `next` is past our log. If an earlier append was lost,
    // the follower rejects this one and the rejection starts the repair; without it, a
    // follower whose last append vanished would wait for the next proposal forever.
    if (pr.match < this.log.lastIndex()) this.#maybeSendAppend(m.from, true);
    if (m.readSeq > 0 && this.voters.has(m.from)) {
      this.readAcks.set(m.from, Math.max(this.readAcks.get(m.from) ?? 0, m.readSeq));
      this.#releaseConfirmedReads();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Linearizable reads by ReadIndex (§6.4 of the thesis)
  // -------------------------------------------------------------------------------------------

  readIndex(context: string): void {
    if (this.role === 'leader') {
      this.#handleReadIndexRequest(context, this.id);
    } else if (this.lead !== NONE && this.role === 'follower') {
      const request: ReadIndexMessage = { type: 'read-index', from: this.id, to: this.lead, term: this.term, context };
      this.#send(request);
    } else {
      this.readRefusals.push({ context, reason: 'no-leader' });
    }
  }

  #committedInCurrentTerm(): boolean {
    return this.log.term(this.log.committed) === this.term;
  }

  #handleReadIndexRequest(context: string, from: NodeId): void {
    // A new leader's commit index may trail the true one until it commits in its own term.
    if (!this.#committedInCurrentTerm()) return this.#refuseRead(context, from, 'leader-not-ready');
    if (this.voters.size === 1 && this.voters.has(this.id)) {
      return this.#releaseRead({ seq: 0, index: this.log.committed, context, from });
    }
    if (this.pendingReads.length >= this.config.pendingReadsMax)
      return this.#refuseRead(context, from, 'too-many-pending');
    this.readSeq++;
    this.pendingReads.push({ seq: this.readSeq, index: this.log.committed, context, from });
    this.readHeartbeatPending = true;
  }

  /** Sends the one heartbeat round that confirms every read queued since the last one. */
  flushReadHeartbeat(): void {
    if (!this.readHeartbeatPending) return;
    this.readHeartbeatPending = false;
    if (this.role === 'leader') this.#broadcastHeartbeat(this.readSeq);
  }

  #releaseConfirmedReads(): void {
    const acks: number[] = [];
    for (const id of this.voters) acks.push(id === this.id ? this.readSeq : (this.readAcks.get(id) ?? 0));
    const confirmed = quorumValue(acks);
    let k = 0;
    while (k < this.pendingReads.length && this.pendingReads[k]!.seq <= confirmed) {
      this.#releaseRead(this.pendingReads[k]!);
      k++;
    }
    if (k > 0) this.pendingReads.splice(0, k);
  }

  #releaseRead(read: PendingRead): void {
    if (read.from === this.id) {
      this.readStates.push({ context: read.context, index: read.index });
    } else {
      const response: ReadIndexResponseMessage = {
        type: 'read-index-response',
        from: this.id,
        to: read.from,
        term: this.term,
        context: read.context,
        index: read.index,
        refusal: null,
      };
      this.#send(response);
    }
  }

  #refuseRead(context: string, from: NodeId, reason: ReadRefusalReason): void {
    if (from === this.id) this.readRefusals.push({ context, reason });
    else
      this.#send({
        type: 'read-index-response',
        from: this.id,
        to: from,
        term: this.term,
        context,
        index: 0,
        refusal: reason,
      });
  }

  #refusePendingReads(reason: ReadRefusalReason): void {
    const pending = this.pendingReads;
    this.pendingReads = [];
    this.readHeartbeatPending = false;
    for (const read of pending) this.#refuseRead(read.context, read.from, reason);
  }

  #readRefusalMessage(m: ReadIndexMessage, reason: ReadRefusalReason): ReadIndexResponseMessage {
    return {
      type: 'read-index-response',
      from: this.id,
      to: m.from,
      term: this.term,
      context: m.context,
      index: 0,
      refusal: reason,
    };
  }

  #handleReadIndexResponse(m: ReadIndexResponseMessage): void {
    if (m.refusal !== null) this.readRefusals.push({ context: m.context, reason: m.refusal });
    else this.readStates.push({ context: m.context, index: m.index });
  }

  // -------------------------------------------------------------------------------------------
  // Proposals
  // -------------------------------------------------------------------------------------------

  propose(data: Uint8Array): { index: number; term: number } {
    this.#checkCanPropose();
    const bytes = normalEntryBytes(data);
    if (bytes > this.config.entryBytesMax) {
      throw new RaftError(
        'ENTRY_TOO_LARGE',
        `entry of ${data.byteLength} bytes exceeds entryBytesMax ${this.config.entryBytesMax}`,
        this.lead,
      );
    }
    if (this.uncommittedBytes + bytes > this.config.uncommittedBytesMax) {
      throw new RaftError(
        'PROPOSALS_BACKLOGGED',
        `${this.uncommittedBytes} bytes are proposed but not committed yet; retry later`,
        this.lead,
      );
    }
    const index = this.#appendEntries([{ kind: 'normal', term: 0, index: 0, data }]);
    this.#broadcastAppend();
    return { index, term: this.term };
  }

  #checkCanPropose(): void {
    if (this.role !== 'leader') throw new RaftError('NOT_LEADER', `node ${this.id} is not the leader`, this.lead);
    if (this.leadTransferee !== NONE) {
      throw new RaftError(
        'TRANSFER_IN_PROGRESS',
        `leadership is being transferred to ${this.leadTransferee}`,
        this.lead,
      );
    }
  }

  proposeConfChange(change: ConfChange): { index: number; term: number } {
    this.#checkCanPropose();
    if (this.pendingConfIndex > this.log.applied) {
      throw new RaftError(
        'CONF_CHANGE_PENDING',
        `the conf change at index ${this.pendingConfIndex} is not applied yet (applied ${this.log.applied}); retry after it`,
        this.lead,
      );
    }
    const problem =
      change.type === 'add-learner' && change.nodeId === this.id
        ? `node ${this.id} leads; transfer leadership before demoting it`
        : this.#confChangeProblem(change);
    if (problem !== null) throw new RaftError('CONF_CHANGE_INVALID', problem, this.lead);
    const index = this.#appendEntries([{ kind: 'conf-change', term: 0, index: 0, change }]);
    this.pendingConfIndex = index;
    this.#broadcastAppend();
    return { index, term: this.term };
  }

  #confChangeProblem(change: ConfChange): string | null {
    const { type, nodeId } = change;
    if (!Number.isSafeInteger(nodeId) || nodeId <= 0) return `node id must be a positive integer: got ${nodeId}`;
    const isVoter = this.voters.has(nodeId);
    const isLearner = this.learners.has(nodeId);
    switch (type) {
      case 'add-voter':
        return isVoter ? `node ${nodeId} is already a voter` : null;
      case 'add-learner':
        if (isLearner) return `node ${nodeId} is already a learner`;
        if (isVoter && this.voters.size === 1) return `node ${nodeId} is the last voter`;
        return null;
      case 'remove':
        if (!isVoter && !isLearner) return `node ${nodeId} is not a member`;
        if (isVoter && this.voters.size === 1) return `node ${nodeId} is the last voter`;
        return null;
      default:
        return unreachable(type, 'conf change type');
    }
  }

  /**
   * Applies a committed conf change (called as the application applies it). Every node applies
   * the same changes at the same indexes, so a change that is invalid here is invalid everywhere
   * and is skipped everywhere.
   */
  applyConfChange(change: ConfChange): void {
    if (this.#confChangeProblem(change) !== null) return;
    const { type, nodeId } = change;
    const wasLeader = this.role === 'leader';
    if (type === 'add-voter') {
      this.learners.delete(nodeId);
      this.voters.add(nodeId);
    } else if (type === 'add-learner') {
      this.voters.delete(nodeId);
      this.learners.add(nodeId);
    } else {
      this.voters.delete(nodeId);
      this.learners.delete(nodeId);
    }
    if (!wasLeader) return;
    if (type === 'remove') this.progress.delete(nodeId);
    else {
      const existing = this.progress.get(nodeId);
      if (existing === undefined) {
        this.progress.set(
          nodeId,
          new Progress(this.log.lastIndex() + 1, type === 'add-learner', this.config.inflightAppendsMax),
        );
      } else {
        existing.learner = type === 'add-learner';
      }
    }
    if (this.leadTransferee === nodeId && !this.voters.has(nodeId)) this.leadTransferee = NONE;
    if (!this.voters.has(this.id)) {
      this.#stepDownAfterRemoval();
      return;
    }
    // The quorum changed: commits and reads may now be possible.
    if (this.#maybeCommit()) this.#broadcastAppend();
    else if (type !== 'remove') this.#maybeSendAppend(nodeId, true);
    this.#releaseConfirmedReads();
  }

  /**
   * §4.2.2 (thesis): a leader removed from the membership steps down once the change is applied.
   * It first tells the most caught-up remaining voter to campaign, so the cluster need not wait
   * a full election timeout.
   */
  #stepDownAfterRemoval(): void {
    let best: NodeId = NONE;
    for (const id of this.voters) {
      const pr = this.progress.get(id);
      if (pr !== undefined && pr.match === this.log.lastIndex()) best = best === NONE ? id : Math.min(best, id);
    }
    if (best !== NONE) this.#sendTimeoutNow(best);
    this.becomeFollower(this.term, NONE);
  }

  // -------------------------------------------------------------------------------------------
  // Leadership transfer (§3.10 of the thesis)
  // -------------------------------------------------------------------------------------------

  transferLeadership(to: NodeId): void {
    if (this.role !== 'leader') throw new RaftError('NOT_LEADER', `node ${this.id} is not the leader`, this.lead);
    if (to === this.id) throw new RaftError('TRANSFER_INVALID', `node ${to} already leads`, this.lead);
    if (!this.voters.has(to)) throw new RaftError('TRANSFER_INVALID', `node ${to} is not a voter`, this.lead);
    if (this.leadTransferee === to) return;
    this.leadTransferee = to;
    // The transfer must finish within one election timeout, counted from now.
    this.electionElapsed = 0;
    const pr = this.progress.get(to)!;
    if (pr.match === this.log.lastIndex()) this.#sendTimeoutNow(to);
    else this.#maybeSendAppend(to, true);
  }

  #sendTimeoutNow(to: NodeId): void {
    this.#send({ type: 'timeout-now', from: this.id, to, term: this.term });
  }

  // -------------------------------------------------------------------------------------------
  // Reports from the IO layer
  // -------------------------------------------------------------------------------------------

  /**
   * The transport lost its connection to `peer`. A leader stops pipelining to it. A follower
   * whose leader it is gives up the leader's lease and campaigns within a few ticks (its turn
   * among the voters, by id, at most leaderLostCampaignTicksMax): if the
   * leader really died, the others lost it too and will grant the pre-vote; if only this link
   * broke, they still hear the leader and refuse, so nothing is disrupted.
   */
  /**
   * The transport found `peer` reachable again (it dialled in: a manager that restarted). A
   * leader sends it a heartbeat now rather than at its next tick, so a restarted follower learns
   * its leader, and can serve reads, a tick sooner. The heartbeat says nothing a tick's would not.
   */
  reportReachable(peer: NodeId): void {
    if (this.role !== 'leader' || peer === this.id) return;
    const pr = this.progress.get(peer);
    if (pr === undefined) return;
    this.#send({
      type: 'heartbeat',
      from: this.id,
      to: peer,
      term: this.term,
      commit: Math.min(pr.match, this.log.committed),
      readSeq: 0,
    });
  }

  reportUnreachable(peer: NodeId): void {
    if (this.role === 'leader') {
      const pr = this.progress.get(peer);
      if (pr !== undefined && pr.state === 'replicate') pr.becomeProbe();
      return;
    }
    if (this.role === 'follower' && peer === this.lead && this.lead !== NONE) this.#campaignInTurn(peer);
  }

  /**
   * Campaign within a few ticks, in turn by id among the voters other than `lost` (a leader
   * whose connection broke; NONE at start). The followers that lost the same leader take turns,
   * a tick apart, instead of drawing lots: two that campaigned in the same tick would split the
   * vote and wait a full randomized election timeout (1 to 2 s at 100 ms ticks). When one's turn
   * comes while a lower one is already campaigning, it has voted for it already, or grants it
   * now. If the lower ones cannot win (down, cut off, behind), the next in turn still goes alone,
   * up to leaderLostCampaignTicksMax turns (4 by default: every follower of five voters).
   */
  #campaignInTurn(lost: NodeId): void {
    let rank = 0;
    for (const id of this.voters) if (id !== lost && id < this.id) rank++;
    const base = this.config.electionTimeoutTicks;
    this.electionElapsed = base;
    this.randomizedElectionTimeout = base + 1 + Math.min(rank, Math.max(0, this.config.leaderLostCampaignTicksMax - 1));
  }

  /** The transport finished (or failed) sending a snapshot to `peer`. */
  reportSnapshot(peer: NodeId, ok: boolean): void {
    const pr = this.progress.get(peer);
    if (this.role !== 'leader' || pr === undefined || pr.state !== 'snapshot') return;
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Wait for the follower's next answer (or heartbeat response) before probing again.
    pr.probeSent = true;
  }

  #send(message: Message): void {
    assert(message.to !== this.id, 'a node does not message itself');
    this.messages.push(message);
  }

  /** Checks what must always hold; the simulator calls it after every step. */
  checkInvariants(): void {
    this.log.checkInvariants();
    if (this.role === 'leader') {
      assert(this.lead === this.id, 'a leader leads');
      assert(this.vote === this.id, 'a leader voted for itself in its term');
      const self = this.progress.get(this.id);
      if (self !== undefined)
        assert(
          self.match === this.log.stableIndex(),
          () =>
            `a leader counts itself for exactly what it persisted: match ${self.match}, stable ${this.log.stableIndex()}`,
        );
    }
    assert(this.role === 'leader' || this.progress.size === 0, 'only a leader tracks progress');
    for (const id of this.voters) assert(!this.learners.has(id), () => `node ${id} is both voter and learner`);
  }
}
