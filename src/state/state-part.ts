import type { Capability, Decision } from './policy.ts';

/** Who asked for a command (a client identity and the key its certificate holds). */
export interface Actor {
  readonly name: string;
  /** SHA-256 of the certificate's public key (hex): see `Identity.spki`. */
  readonly key: string;
}

/**
 * Why a command or a read was refused, one set for every part of the applied state. The server
 * maps each to one gRPC status (src/server/errors.ts, refusalStatus).
 */
export type RefusalCode =
  /** The command or request is malformed or breaks a rule of form (a name, a label, a size). */
  | 'INVALID'
  /** What it names does not exist (a secret, a version, a label, a policy, an identity). */
  | 'NOT_FOUND'
  /** The version expired. */
  | 'EXPIRED'
  /** The secret is deleted (undelete it to read it). */
  | 'DELETED'
  /** The version was destroyed. */
  | 'DESTROYED'
  /** A compare-and-set named another version than the current one. */
  | 'CAS_MISMATCH'
  /** It exists already and changing it is a separate act (re-issuing an identity). */
  | 'EXISTS'
  /** A limit or quota would be passed. */
  | 'LIMIT'
  /** The actor may not do this: its certificate, its policies, or a join token that does not admit it. */
  | 'DENIED'
  /** The state is not one the command can apply to (a CA still trusted, an id taken, an audit log that went back). */
  | 'PRECONDITION';

export const REFUSAL_CODES: readonly RefusalCode[] = [
  'INVALID',
  'NOT_FOUND',
  'EXPIRED',
  'DELETED',
  'DESTROYED',
  'CAS_MISMATCH',
  'EXISTS',
  'LIMIT',
  'DENIED',
  'PRECONDITION',
];

/**
 * The finer reason of a refusal, where its code alone would leave a program guessing (NOT_FOUND:
 * of what?). Stable UPPER_SNAKE names, which the server sends as the error's reason
 * (src/server/errors.ts); each belongs to one code.
 */
export const REFUSAL_REASON_CODES = {
  SECRET_NOT_FOUND: 'NOT_FOUND',
  VERSION_NOT_FOUND: 'NOT_FOUND',
  LABEL_NOT_FOUND: 'NOT_FOUND',
  POLICY_NOT_FOUND: 'NOT_FOUND',
  IDENTITY_NOT_FOUND: 'NOT_FOUND',
  ROLE_NOT_FOUND: 'NOT_FOUND',
  AUTH_METHOD_NOT_FOUND: 'NOT_FOUND',
  IDENTITY_EXISTS: 'EXISTS',
  CAS_MISMATCH: 'CAS_MISMATCH',
  QUOTA_EXCEEDED: 'LIMIT',
  TOO_MANY_LABELS: 'LIMIT',
  POLICY_DENIED: 'DENIED',
  CERTIFICATE_REVOKED: 'DENIED',
  IDENTITY_REVOKED: 'DENIED',
  TOTP_REUSED: 'DENIED',
  GRANT_NOT_HELD: 'DENIED',
  JOIN_TOKEN_REFUSED: 'DENIED',
  NAME_RESERVED: 'DENIED',
} as const satisfies Record<string, RefusalCode>;
export type RefusalReason = keyof typeof REFUSAL_REASON_CODES;

/** Facts about a refusal for programs (a limit, the current version): never a secret's value. */
export type RefusalMetadata = Readonly<Record<string, string>>;

/** A refused command (or read): the same shape from every part, so callers need no part-specific checks. */
export interface Refusal {
  readonly ok: false;
  readonly code: RefusalCode;
  /** What went wrong and what to do, for people. */
  readonly reason: string;
  readonly reasonCode?: RefusalReason;
  readonly metadata?: RefusalMetadata;
}

export function refusal(code: RefusalCode, reason: string): Refusal {
  return { ok: false, code, reason };
}

/** A refusal by its finer reason (its code follows from it). */
export function refusedAs(reasonCode: RefusalReason, reason: string, metadata?: RefusalMetadata): Refusal {
  return {
    ok: false,
    code: REFUSAL_REASON_CODES[reasonCode],
    reason,
    reasonCode,
    ...(metadata === undefined ? {} : { metadata }),
  };
}

/** A refusal thrown by a read (a command returns its refusal as a result instead). */
export class RefusalError extends Error {
  override name = 'RefusalError';
  readonly code: RefusalCode;
  readonly reasonCode: RefusalReason | undefined;
  readonly metadata: RefusalMetadata | undefined;
  constructor(
    code: RefusalCode,
    message: string,
    detail: { reasonCode?: RefusalReason; metadata?: RefusalMetadata } = {},
  ) {
    super(message);
    this.code = code;
    this.reasonCode = detail.reasonCode;
    this.metadata = detail.metadata;
  }

  /** A read refused by its finer reason (its code follows from it). */
  static as(reasonCode: RefusalReason, message: string, metadata?: RefusalMetadata): RefusalError {
    return new RefusalError(REFUSAL_REASON_CODES[reasonCode], message, {
      reasonCode,
      ...(metadata === undefined ? {} : { metadata }),
    });
  }
}

/** What every command's kind starts with: which part of the applied state it belongs to. */
export type PartPrefix = 'cluster.' | 'secret.' | 'access.';

/** A command as the log carries it. */
export interface EncodedCommand {
  readonly kind: string;
  readonly data: Buffer;
}

/** A command read back from the log, checked field by field, with the client that asked for it (null: a manager's own). */
export interface DecodedCommand<Command> {
  readonly ok: true;
  readonly command: Command;
  readonly actor: Actor | null;
}

/**
 * What authorization may read: which certificates may act for which identity, and what the
 * replicated policies let each identity do (the access part, AccessState, is the one authority).
 */
export interface Authority {
  certificateValid(name: string, key: string): boolean;
  decide(name: string, capability: Capability, path: string): Decision;
}

/**
 * The refusal of a command whose actor's certificate is not valid here (revoked before the
 * command applied, or its key no longer listed), or null: the first check of every `authorize`
 * that checks anything. `what` is the command, as the refusal says it ("write", "change").
 */
export function certificateRefusal(authority: Authority, actor: Actor, what: string): Refusal | null {
  return authority.certificateValid(actor.name, actor.key)
    ? null
    : refusedAs(
        'CERTIFICATE_REVOKED',
        `the certificate of identity "${actor.name}" was revoked before this ${what} applied`,
      );
}

/**
 * The contract of every part of the applied state (cluster facts, secrets, access). AppliedState
 * routes each committed command to the part whose prefix its kind starts with, and runs, in
 * order: `decode`; `authorize` if the command names an actor (a client); then `apply`.
 *
 * Every step reads only replicated state, so every manager reaches the same verdict at the same
 * index, and none throws on bad input: a refusal is a result, and a refused command changes
 * nothing. A part's image (`snapshot`) is plain data for msgpack; AppliedState packs the parts'
 * images into one, in table order.
 *
 * The steps are kept apart for the move of the applied state to a key-value store on disk:
 * `decode` reads nothing, `authorize` only reads, `apply` is the one step that writes (a refusal
 * is decided before any write, so a part can gather its writes into one batch), and
 * `snapshot`/`restore` are the whole part out and in.
 */
export interface StatePart<Command, Applied extends { readonly ok: true }> {
  readonly prefix: PartPrefix;
  /** The command as the log carries it (`kind` starts with `prefix`), with the client that asked for it. */
  encode(command: Command, actor: Actor | null): EncodedCommand;
  /** Checks a logged command field by field: garbage is refused with code INVALID, never thrown. */
  decode(kind: string, data: Uint8Array): DecodedCommand<Command> | Refusal;
  /**
   * Whether `actor` may run `command` against the state as it is now: null if it may, else a
   * refusal (DENIED). A command that needs any right checks first that the actor's certificate
   * is still valid (certificateRefusal), then the rights. Only commands with an actor are
   * authorized; a manager's own commands (actor null) are not.
   */
  authorize(command: Command, actor: Actor, authority: Authority): Refusal | null;
  /**
   * Applies a decoded (and, if it names an actor, authorized) command; `actor` is who is charged
   * for it, `index` the log index of its entry (a part on the state store seals with it).
   */
  apply(command: Command, actor: Actor | null, index: number): Applied | Refusal;
  /** The part's state as plain data (msgpack-able); equal states give equal images. */
  snapshot(): unknown | Promise<unknown>;
  /** Replaces the whole state with an image `snapshot` made (by this version or an older one) at log index `index`. */
  restore(image: unknown, index: number): void | Promise<void>;
}
