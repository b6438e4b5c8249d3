import { packr } from '../codec/msgpack.ts';
import { actorOf, type Actor } from './access-state.ts';
import {
  RefusalError,
  certificateRefusal,
  refusal,
  type Authority,
  type DecodedCommand,
  type EncodedCommand,
  type Refusal,
  type StatePart,
} from './state-part.ts';
import {
  IDENTITY_SECRETS_MAX,
  IDENTITY_VALUE_BYTES_MAX,
  LABEL_PATTERN,
  RESERVED_LABELS,
  SECRET_VALUE_BYTES_MAX,
  TTL_MS_MAX,
  USER_LABELS_MAX,
  VERSIONS_KEPT_DEFAULT,
  VERSIONS_KEPT_MAX,
  formatBytes,
  labelProblem,
  secretNameProblem,
} from './limits.ts';

/** What a secret command returns when it applies: the version it wrote or left current (for the sweep: how many it wiped). */
export interface SecretApplied {
  readonly ok: true;
  readonly version: number;
}
export type SecretResult = SecretApplied | Refusal;

/** Commands, as proposed. Times come from the proposer, so applying them is deterministic. */
export type SecretCommand =
  | {
      readonly op: 'put';
      readonly name: string;
      readonly value: Uint8Array;
      readonly cas: number | null;
      readonly expireAtMs: number | null;
      readonly versionsKept: number | null;
      readonly nowMs: number;
    }
  | { readonly op: 'delete'; readonly name: string }
  | { readonly op: 'undelete'; readonly name: string }
  | { readonly op: 'destroy'; readonly name: string; readonly versions: readonly number[] }
  | { readonly op: 'label'; readonly name: string; readonly label: string; readonly version: number }
  | { readonly op: 'unlabel'; readonly name: string; readonly label: string }
  | { readonly op: 'expire'; readonly nowMs: number };

export interface VersionMetadata {
  readonly version: number;
  readonly createdAtMs: number;
  readonly expireAtMs: number | null;
  readonly destroyed: boolean;
  readonly expired: boolean;
  readonly labels: readonly string[];
}

export interface SecretMetadata {
  readonly name: string;
  readonly currentVersion: number;
  readonly versionsKept: number;
  readonly deleted: boolean;
  readonly createdAtMs: number;
  readonly updatedAtMs: number;
  readonly labels: ReadonlyArray<readonly [string, number]>;
}

interface VersionRecord {
  readonly version: number;
  value: Buffer | null;
  readonly createdAtMs: number;
  readonly expireAtMs: number | null;
  expired: boolean;
  /** The identity charged for the value while it is kept (null: the leader's own, or an older image). */
  readonly writer: string | null;
}

interface SecretRecord {
  readonly name: string;
  readonly versions: Map<number, VersionRecord>;
  lastVersion: number;
  readonly labels: Map<string, number>;
  deleted: boolean;
  versionsKept: number;
  readonly createdAtMs: number;
  updatedAtMs: number;
  /** The identity charged for the secret (null: the leader's own, or an older image). */
  readonly creator: string | null;
}

/** What an identity is charged for (IDENTITY_SECRETS_MAX, IDENTITY_VALUE_BYTES_MAX). */
export interface IdentityUsage {
  readonly secrets: number;
  readonly valueBytes: number;
}

/** The quotas per identity a store enforces; the defaults are the limits of limits.ts (tests set smaller ones). */
export interface IdentityQuotas {
  readonly identitySecretsMax?: number;
  readonly identityValueBytesMax?: number;
}

/** Who asked for a command: checked again against the replicated policies when it is applied. */
export type { Actor };

/**
 * A value's own copy, outside Node's shared 8 KiB buffer pool: Buffer.from copies a small value
 * into a slice of that pool, and a long-lived slice keeps its whole slab alive.
 */
function ownedCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.byteLength);
  copy.set(bytes);
  return copy;
}

/** Encodes a command for the log (`kind` is `secret.<op>`), with the client that asked for it. */
export function encodeSecretCommand(command: SecretCommand, actor: Actor | null = null): EncodedCommand {
  return { kind: `secret.${command.op}`, data: packr.pack(actor === null ? command : { ...command, actor }) };
}

/** Decodes a command and its actor (null for the leader's own commands, such as the expiry sweep). */
function decodeSecretCommand(kind: string, data: Uint8Array): DecodedCommand<SecretCommand> | Refusal {
  let value: unknown;
  try {
    value = packr.unpack(data);
  } catch {
    return refusal('INVALID', `the ${kind.slice(0, 60)} command does not decode`);
  }
  const command = checkedSecretCommand(kind, value);
  if (typeof command === 'string') return refusal('INVALID', command);
  const actor = actorOf((value as Record<string, unknown>)['actor']);
  if (typeof actor === 'string') return refusal('INVALID', actor);
  return { ok: true, command, actor };
}

/**
 * The secrets: versions, labels, soft delete, destruction, expiry. Applying is deterministic
 * (every manager ends in the same state); refusals are results, not exceptions. Reads take the
 * reader's clock only to hide versions past their expiry before the leader's sweep wipes them.
 */
export class SecretStore implements StatePart<SecretCommand, SecretApplied> {
  readonly prefix = 'secret.';
  readonly #secrets = new Map<string, SecretRecord>();

  /** Per identity: secrets created and value bytes held (recomputed from the versions at restore). */
  readonly #usage = new Map<string, { secrets: number; valueBytes: number }>();
  readonly #identitySecretsMax: number;
  readonly #identityValueBytesMax: number;

  constructor(quotas: IdentityQuotas = {}) {
    this.#identitySecretsMax = quotas.identitySecretsMax ?? IDENTITY_SECRETS_MAX;
    this.#identityValueBytesMax = quotas.identityValueBytesMax ?? IDENTITY_VALUE_BYTES_MAX;
  }

  encode(command: SecretCommand, actor: Actor | null): EncodedCommand {
    return encodeSecretCommand(command, actor);
  }

  decode(kind: string, data: Uint8Array): DecodedCommand<SecretCommand> | Refusal {
    return decodeSecretCommand(kind, data);
  }

  /**
   * A client's command is authorized again where it applies: the manager that took it may have
   * been behind (a revocation or a policy change already committed), and every manager must reach
   * the same verdict, so the check reads only replicated state: the actor's certificate, then the
   * capabilities the command needs on its secret (requiredCapabilities), each allowed by its policies.
   */
  authorize(command: SecretCommand, actor: Actor, authority: Authority): Refusal | null {
    const needed = this.requiredCapabilities(command);
    // The expiry sweep needs no right (it wipes only what expired), so nobody's certificate is checked.
    if (needed === null) return null;
    const revoked = certificateRefusal(authority, actor, 'write');
    if (revoked !== null) return revoked;
    for (const capability of needed.capabilities) {
      if (!authority.decide(actor.name, capability, needed.name).allowed)
        return refusal('DENIED', `identity "${actor.name}" may not ${capability} "${needed.name}"`);
    }
    return null;
  }

  /** What `identity` is charged for now. */
  usage(identity: string): IdentityUsage {
    const usage = this.#usage.get(identity);
    return { secrets: usage?.secrets ?? 0, valueBytes: usage?.valueBytes ?? 0 };
  }

  /**
   * The capabilities a command needs on its secret, given the state it will apply to: `write` for
   * puts and labels, `delete` for delete, undelete and destroy, and `delete` too for a put that
   * would wipe kept versions by lowering the versions kept, or bring back a deleted secret.
   */
  requiredCapabilities(command: SecretCommand): { name: string; capabilities: Array<'write' | 'delete'> } | null {
    if (command.op === 'expire') return null;
    if (command.op === 'delete' || command.op === 'undelete' || command.op === 'destroy')
      return { name: command.name, capabilities: ['delete'] };
    if (command.op !== 'put') return { name: command.name, capabilities: ['write'] };
    const secret = this.#secrets.get(command.name);
    const wipes = secret !== undefined && command.versionsKept !== null && command.versionsKept < secret.versions.size;
    return { name: command.name, capabilities: wipes || secret?.deleted === true ? ['write', 'delete'] : ['write'] };
  }

  /** Applies a command; a put by `actor` is charged to it, within its quotas (null: nobody). No authorization: see `authorize`. */
  apply(command: SecretCommand, actor: Actor | null = null): SecretResult {
    switch (command.op) {
      case 'put':
        return this.#put(command, actor?.name ?? null);
      case 'delete':
      case 'undelete': {
        const secret = this.#secrets.get(command.name);
        if (secret === undefined) return refusal('NOT_FOUND', `secret "${command.name}" does not exist`);
        secret.deleted = command.op === 'delete';
        return { ok: true, version: secret.lastVersion };
      }
      case 'destroy': {
        const secret = this.#secrets.get(command.name);
        if (secret === undefined) return refusal('NOT_FOUND', `secret "${command.name}" does not exist`);
        for (const n of command.versions) {
          if (!secret.versions.has(n)) return refusal('NOT_FOUND', `secret "${command.name}" has no version ${n}`);
        }
        for (const n of command.versions) this.#wipe(secret.versions.get(n)!);
        return { ok: true, version: secret.lastVersion };
      }
      case 'label': {
        const secret = this.#secrets.get(command.name);
        if (secret === undefined) return refusal('NOT_FOUND', `secret "${command.name}" does not exist`);
        const version = secret.versions.get(command.version);
        if (version === undefined)
          return refusal('NOT_FOUND', `secret "${command.name}" has no version ${command.version}`);
        if (version.value === null)
          return refusal('DESTROYED', `secret "${command.name}": version ${command.version} was destroyed`);
        const userLabels = [...secret.labels.keys()].filter((l) => !isReservedLabel(l));
        if (
          !secret.labels.has(command.label) &&
          !isReservedLabel(command.label) &&
          userLabels.length >= USER_LABELS_MAX
        ) {
          return refusal('LIMIT', `secret "${command.name}" already has ${USER_LABELS_MAX} labels`);
        }
        secret.labels.set(command.label, command.version);
        return { ok: true, version: command.version };
      }
      case 'unlabel': {
        const secret = this.#secrets.get(command.name);
        if (secret === undefined) return refusal('NOT_FOUND', `secret "${command.name}" does not exist`);
        if (isReservedLabel(command.label))
          return refusal('INVALID', `the label "${command.label}" is kept by the store; move it instead`);
        if (!secret.labels.delete(command.label))
          return refusal('NOT_FOUND', `secret "${command.name}" has no label "${command.label}"`);
        return { ok: true, version: secret.lastVersion };
      }
      case 'expire': {
        let wiped = 0;
        for (const secret of this.#secrets.values()) {
          for (const version of secret.versions.values()) {
            if (version.value !== null && version.expireAtMs !== null && version.expireAtMs <= command.nowMs) {
              this.#wipe(version);
              version.expired = true;
              wiped++;
            }
          }
        }
        return { ok: true, version: wiped };
      }
    }
  }

  #put(command: Extract<SecretCommand, { op: 'put' }>, writer: string | null): SecretResult {
    let secret = this.#secrets.get(command.name);
    const current = secret === undefined || secret.deleted ? 0 : (secret.labels.get('current') ?? 0);
    if (command.cas !== null && command.cas !== (secret?.lastVersion ?? 0)) {
      return refusal(
        'CAS_MISMATCH',
        command.cas === 0
          ? `secret "${command.name}" already exists (version ${secret?.lastVersion})`
          : `secret "${command.name}" is at version ${secret?.lastVersion ?? 0}, not ${command.cas}`,
      );
    }
    if (writer !== null) {
      const problem = this.#quotaProblem(writer, secret, command);
      if (problem !== null) return refusal('LIMIT', problem);
    }
    if (secret === undefined) {
      secret = {
        name: command.name,
        versions: new Map(),
        lastVersion: 0,
        labels: new Map(),
        deleted: false,
        versionsKept: VERSIONS_KEPT_DEFAULT,
        createdAtMs: command.nowMs,
        updatedAtMs: command.nowMs,
        creator: writer,
      };
      this.#secrets.set(command.name, secret);
      this.#charge(writer, 1, 0);
    }
    if (command.versionsKept !== null) secret.versionsKept = command.versionsKept;
    const version = secret.lastVersion + 1;
    const value = ownedCopy(command.value);
    secret.versions.set(version, {
      version,
      value,
      createdAtMs: command.nowMs,
      expireAtMs: command.expireAtMs,
      expired: false,
      writer,
    });
    this.#charge(writer, 0, value.byteLength);
    secret.lastVersion = version;
    secret.deleted = false;
    secret.updatedAtMs = command.nowMs;
    if (current !== 0) secret.labels.set('previous', current);
    secret.labels.set('current', version);
    // Keep the newest `versionsKept`; older ones are wiped and forgotten, with their labels.
    for (const old of [...secret.versions.keys()]) {
      if (old <= version - secret.versionsKept) {
        this.#wipe(secret.versions.get(old)!);
        secret.versions.delete(old);
        for (const [label, at] of secret.labels) if (at === old) secret.labels.delete(label);
      }
    }
    return { ok: true, version };
  }

  /**
   * The same check against this manager's state, for the server edge to refuse early (before a
   * doomed put takes a log entry); the verdict that counts is the one where the command applies.
   */
  putQuotaProblem(writer: string, command: Extract<SecretCommand, { op: 'put' }>): string | null {
    return this.#quotaProblem(writer, this.#secrets.get(command.name), command);
  }

  /**
   * Why a put by `writer` would take it past a quota, or null. A new secret counts once for its
   * creator; the value's bytes count for the writer, less what the versions it drops (versions
   * kept) held for the same writer, so a put that frees as much as it adds always passes.
   */
  #quotaProblem(
    writer: string,
    secret: SecretRecord | undefined,
    command: Extract<SecretCommand, { op: 'put' }>,
  ): string | null {
    const usage = this.usage(writer);
    if (secret === undefined && usage.secrets >= this.#identitySecretsMax) {
      return `identity "${writer}" has created ${usage.secrets} secrets, the most one identity may (IDENTITY_SECRETS_MAX); write new versions of its secrets instead (a name stays taken after delete and destroy)`;
    }
    let freed = 0;
    if (secret !== undefined) {
      const oldest = secret.lastVersion + 1 - (command.versionsKept ?? secret.versionsKept);
      for (const v of secret.versions.values())
        if (v.version <= oldest && v.writer === writer && v.value !== null) freed += v.value.byteLength;
    }
    const after = usage.valueBytes - freed + command.value.byteLength;
    if (after > this.#identityValueBytesMax && after > usage.valueBytes) {
      return `identity "${writer}" holds ${formatBytes(usage.valueBytes)} of secret values; this value of ${formatBytes(command.value.byteLength)} would take it past ${formatBytes(this.#identityValueBytesMax)}, the most one identity may (IDENTITY_VALUE_BYTES_MAX); destroy old versions or lower versions_kept`;
    }
    return null;
  }

  #charge(identity: string | null, secrets: number, valueBytes: number): void {
    if (identity === null) return;
    const usage = this.#usage.get(identity) ?? { secrets: 0, valueBytes: 0 };
    usage.secrets += secrets;
    usage.valueBytes += valueBytes;
    if (usage.secrets === 0 && usage.valueBytes === 0) this.#usage.delete(identity);
    else this.#usage.set(identity, usage);
  }

  /** Overwrites a value's bytes before dropping it (the process's copy; disks hold only ciphertext), and uncharges its writer. */
  #wipe(version: VersionRecord): void {
    if (version.value === null) return;
    this.#charge(version.writer, 0, -version.value.byteLength);
    version.value.fill(0);
    version.value = null;
  }

  /** A version's value: by number, by label, or the current one. Throws RefusalError. */
  read(
    name: string,
    selector: { version?: number; label?: string },
    nowMs: number,
  ): { value: Buffer; version: number } {
    const secret = this.#secrets.get(name);
    if (secret === undefined) throw new RefusalError('NOT_FOUND', `secret "${name}" does not exist`);
    if (secret.deleted) throw new RefusalError('DELETED', `secret "${name}" is deleted; undelete it to read it`);
    let number = selector.version;
    if (number === undefined) {
      const label = selector.label ?? 'current';
      number = secret.labels.get(label);
      if (number === undefined) throw new RefusalError('NOT_FOUND', `secret "${name}" has no label "${label}"`);
    }
    const version = secret.versions.get(number);
    if (version === undefined) {
      throw new RefusalError(
        'NOT_FOUND',
        number > secret.lastVersion || number < 1
          ? `secret "${name}" has no version ${number}`
          : `secret "${name}": version ${number} is no longer kept (the last ${secret.versionsKept} are)`,
      );
    }
    if (version.expired || (version.expireAtMs !== null && version.expireAtMs <= nowMs))
      throw new RefusalError('EXPIRED', `secret "${name}": version ${number} expired`);
    if (version.value === null)
      throw new RefusalError('DESTROYED', `secret "${name}": version ${number} was destroyed`);
    return { value: version.value, version: number };
  }

  metadata(name: string): SecretMetadata {
    const secret = this.#secrets.get(name);
    if (secret === undefined) throw new RefusalError('NOT_FOUND', `secret "${name}" does not exist`);
    return metadataOf(secret);
  }

  versions(name: string, nowMs: number): VersionMetadata[] {
    const secret = this.#secrets.get(name);
    if (secret === undefined) throw new RefusalError('NOT_FOUND', `secret "${name}" does not exist`);
    return [...secret.versions.values()]
      .sort((a, b) => a.version - b.version)
      .map((v) => ({
        version: v.version,
        createdAtMs: v.createdAtMs,
        expireAtMs: v.expireAtMs,
        destroyed: v.value === null && !v.expired,
        expired: v.expired || (v.expireAtMs !== null && v.expireAtMs <= nowMs),
        labels: [...secret.labels].filter(([, at]) => at === v.version).map(([label]) => label),
      }));
  }

  /** Names under a prefix in order, after `after` (the page token), at most `limit`. */
  list(
    prefix: string,
    after: string,
    limit: number,
    includeDeleted: boolean,
    visible: (name: string) => boolean = () => true,
  ): { secrets: SecretMetadata[]; next: string } {
    const names = [...this.#secrets.keys()].filter((n) => n.startsWith(prefix) && n > after).sort();
    const page: SecretMetadata[] = [];
    for (const name of names) {
      const secret = this.#secrets.get(name)!;
      if ((secret.deleted && !includeDeleted) || !visible(name)) continue;
      if (page.length === limit) return { secrets: page, next: page[page.length - 1]!.name };
      page.push(metadataOf(secret));
    }
    return { secrets: page, next: '' };
  }

  /** The earliest expiry still to wipe (for the leader's sweep), or null. */
  nextExpiryMs(): number | null {
    let next: number | null = null;
    for (const secret of this.#secrets.values()) {
      for (const v of secret.versions.values())
        if (v.value !== null && v.expireAtMs !== null && (next === null || v.expireAtMs < next)) next = v.expireAtMs;
    }
    return next;
  }

  get size(): number {
    return this.#secrets.size;
  }

  /** The image: each version remembers its writer and each secret its creator (the quotas are recomputed from them). */
  snapshot(): unknown {
    return [...this.#secrets.values()].map((s) => [
      s.name,
      [...s.versions.values()].map((v) => [v.version, v.value, v.createdAtMs, v.expireAtMs, v.expired, v.writer]),
      s.lastVersion,
      [...s.labels],
      s.deleted,
      s.versionsKept,
      s.createdAtMs,
      s.updatedAtMs,
      s.creator,
    ]);
  }

  /** Reads an image; one made before quotas (no writers, no creators) charges nobody. */
  restore(image: unknown): void {
    this.#secrets.clear();
    this.#usage.clear();
    const identity = (value: unknown): string | null => (typeof value === 'string' ? value : null);
    type Row = [
      string,
      Array<[number, Uint8Array | null, number, number | null, boolean, unknown?]>,
      number,
      Array<[string, number]>,
      boolean,
      number,
      number,
      number,
      unknown?,
    ];
    for (const [
      name,
      versions,
      lastVersion,
      labels,
      deleted,
      versionsKept,
      createdAtMs,
      updatedAtMs,
      creator,
    ] of image as Row[]) {
      const secret: SecretRecord = {
        name,
        versions: new Map(
          versions.map(([version, value, created, expireAtMs, expired, writer]) => [
            version,
            {
              version,
              value: value === null ? null : ownedCopy(value),
              createdAtMs: created,
              expireAtMs,
              expired,
              writer: identity(writer),
            },
          ]),
        ),
        lastVersion,
        labels: new Map(labels),
        deleted,
        versionsKept,
        createdAtMs,
        updatedAtMs,
        creator: identity(creator),
      };
      this.#secrets.set(name, secret);
      this.#charge(secret.creator, 1, 0);
      for (const v of secret.versions.values()) if (v.value !== null) this.#charge(v.writer, 0, v.value.byteLength);
    }
  }
}

function isReservedLabel(label: string): boolean {
  return (RESERVED_LABELS as readonly string[]).includes(label);
}

function metadataOf(secret: SecretRecord): SecretMetadata {
  return {
    name: secret.name,
    currentVersion: secret.labels.get('current') ?? 0,
    versionsKept: secret.versionsKept,
    deleted: secret.deleted,
    createdAtMs: secret.createdAtMs,
    updatedAtMs: secret.updatedAtMs,
    labels: [...secret.labels],
  };
}

/** A decoded command, checked field by field, or why it is not one. */
function checkedSecretCommand(kind: string, value: unknown): SecretCommand | string {
  if (typeof value !== 'object' || value === null) return `the ${kind} command is not a record`;
  const c = value as Record<string, unknown>;
  if (kind !== `secret.${String(c['op'])}`) return `the ${kind} command names another operation`;
  const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
  if (c['op'] === 'expire')
    return int(c['nowMs']) ? { op: 'expire', nowMs: c['nowMs'] } : 'an expiry sweep needs a time';
  const name = c['name'];
  if (typeof name !== 'string') return 'a secret command needs a name';
  const nameProblem = secretNameProblem(name);
  if (nameProblem !== null) return nameProblem;
  switch (c['op']) {
    case 'put': {
      const { value: v, cas, expireAtMs, versionsKept, nowMs } = c;
      if (!(v instanceof Uint8Array)) return 'a put needs a value';
      if (v.byteLength > SECRET_VALUE_BYTES_MAX) return `a secret value has at most ${SECRET_VALUE_BYTES_MAX} bytes`;
      if (!int(nowMs)) return 'a put needs a time';
      if (cas !== null && !(int(cas) && cas >= 0)) return 'cas is a version number (0: create only)';
      if (expireAtMs !== null && !(int(expireAtMs) && expireAtMs <= nowMs + TTL_MS_MAX))
        return 'an expiry is at most ten years ahead';
      if (versionsKept !== null && !(int(versionsKept) && versionsKept >= 1 && versionsKept <= VERSIONS_KEPT_MAX))
        return `versions kept is between 1 and ${VERSIONS_KEPT_MAX}`;
      return { op: 'put', name, value: v, cas, expireAtMs, versionsKept, nowMs };
    }
    case 'delete':
    case 'undelete':
      return { op: c['op'], name };
    case 'destroy': {
      const versions = c['versions'];
      if (!Array.isArray(versions) || versions.length === 0 || !versions.every((n) => int(n) && n > 0))
        return 'destroy needs version numbers';
      return { op: 'destroy', name, versions };
    }
    case 'label':
    case 'unlabel': {
      const label = c['label'];
      if (typeof label !== 'string' || !LABEL_PATTERN.test(label)) return labelProblem(String(label)) ?? 'bad label';
      if (c['op'] === 'unlabel') return { op: 'unlabel', name, label };
      const version = c['version'];
      if (!(int(version) && version > 0)) return 'a label needs a version';
      return { op: 'label', name, label, version };
    }
    default:
      return `unknown secret operation ${String(c['op'])}`;
  }
}
