import { STATIC_SECRET_NAME_PATTERN } from '../state/static-roles.ts';
import { awaitStaticRotation } from './db/static-role-methods.ts';
import type * as grpc from '@grpc/grpc-js';
import { randomInt } from 'node:crypto';
import {
  CHARSETS,
  GENERATE_LENGTH_MAX,
  LIST_PAGE_SIZE_MAX,
  PUT_BATCH_BYTES_MAX,
  PUT_BATCH_ITEMS_MAX,
  SECRET_NAME_BYTES_MAX,
  SECRET_VALUE_BYTES_MAX,
  TTL_MS_MAX,
  VERSIONS_KEPT_MAX,
  formatBytes,
  labelProblem,
  putBatchItemBytes,
  secretNameProblem,
  type Charset,
} from '../state/limits.ts';
import { QUOTAS_PATH } from '../state/applied-state.ts';
import { encodeSecretCommand, type SecretCommand, type SecretMetadata } from '../state/secret-store.ts';
import { ServiceError, refusalAbout, refuse } from './errors.ts';
import type { ServiceContext } from './context.ts';
import { WIPE_AFTER_REPLY, authenticateClient, authorize, noteTargets, unary, type Call } from './rpc.ts';

type Cas = { version: number } | null;

/** A put as the API carries it (PutSecretRequest), alone or as an item of a batch. */
interface PutRequest {
  name: string;
  value: Buffer;
  cas: Cas;
  ttlSeconds: number;
  expireAtMs: number;
  versionsKept: number;
}

function invalid(message: string, metadata: Readonly<Record<string, string>> = {}): ServiceError {
  return refuse('INVALID_ARGUMENT', message, metadata);
}

/** Checked before anything else of the request is used: an invalid name is never authorized, audited or logged. */
function checkName(name: string): void {
  const problem = secretNameProblem(name);
  if (problem !== null)
    throw refuse(
      'INVALID_NAME',
      `secret name ${JSON.stringify(name.slice(0, 64))}${name.length > 64 ? '...' : ''}: ${problem}`,
      { field: 'name', limit: String(SECRET_NAME_BYTES_MAX) },
    );
}

/**
 * A put's command, its value and fields checked against the limits (its name was checked before):
 * VALUE_TOO_LARGE, then versions kept, then the expiry.
 */
function putCommand(r: PutRequest, nowMs: number): Extract<SecretCommand, { op: 'put' }> {
  if (r.value.byteLength > SECRET_VALUE_BYTES_MAX)
    throw refuse(
      'VALUE_TOO_LARGE',
      `the value has ${r.value.byteLength} bytes; a secret value has at most ${SECRET_VALUE_BYTES_MAX}`,
      { limit: String(SECRET_VALUE_BYTES_MAX), bytes: String(r.value.byteLength) },
    );
  if (r.versionsKept > VERSIONS_KEPT_MAX)
    throw invalid(`versions_kept is at most ${VERSIONS_KEPT_MAX}`, {
      field: 'versions_kept',
      limit: String(VERSIONS_KEPT_MAX),
    });
  return {
    op: 'put',
    name: r.name,
    value: r.value,
    cas: r.cas === null ? null : r.cas.version,
    expireAtMs: expiry(r.ttlSeconds, r.expireAtMs, nowMs),
    versionsKept: r.versionsKept === 0 ? null : r.versionsKept,
    nowMs,
  };
}

/**
 * Runs a check of item `k` of a batch: its refusal names the item (from 1, in the message and in
 * metadata `item`), and, once the name is known to be valid, the name.
 */
function forItem<T>(k: number, count: number, name: string | null, check: () => T): T {
  try {
    return check();
  } catch (error) {
    if (!(error instanceof ServiceError)) throw error;
    const which = name === null ? `item ${k + 1} of ${count}` : `item ${k + 1} of ${count} (${JSON.stringify(name)})`;
    throw refusalAbout(error, `${which}: `, '; no item of the batch was applied', { item: String(k + 1) });
  }
}

function expiry(ttlSeconds: number, expireAtMs: number, nowMs: number): number | null {
  if (ttlSeconds !== 0 && expireAtMs !== 0)
    throw invalid('give ttl_seconds or expire_at_ms, not both', { field: 'ttl_seconds' });
  const at = ttlSeconds !== 0 ? nowMs + ttlSeconds * 1000 : expireAtMs !== 0 ? expireAtMs : null;
  if (at !== null && (at <= nowMs || at > nowMs + TTL_MS_MAX))
    throw invalid('an expiry must be in the future and at most ten years ahead', {
      field: ttlSeconds !== 0 ? 'ttl_seconds' : 'expire_at_ms',
    });
  return at;
}

/** A value of `length` characters drawn uniformly from the charset (randomInt has no modulo bias). */
export function generateValue(length: number, charset: Charset): Buffer {
  const alphabet = CHARSETS[charset];
  let out = '';
  for (let k = 0; k < length; k++) out += alphabet[randomInt(alphabet.length)];
  return Buffer.from(out);
}

function metadataReply(m: SecretMetadata): object {
  return { ...m, labels: m.labels.map(([label, version]) => ({ label, version })) };
}

/** The Secrets service (coffer.v1.Secrets): every name checked first, then authorized, audited by rpc.ts. */
export function secretsService(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  const store = ctx.state.secrets;

  /** Proposes (forwarding to the leader if needed), as the caller, and turns a refusal into its status. */
  const write = async (call: Call<unknown>, command: SecretCommand): Promise<number> => {
    const caller = authenticateClient(ctx, call);
    const result = await ctx.propose(encodeSecretCommand(command, { name: caller.id, key: caller.spki }));
    return 'version' in result ? result.version : 0;
  };
  /** Linearizable unless stale: waits until this manager has applied every write committed before. */
  const readPoint = (stale: boolean): Promise<number> => ctx.readPoint(stale);

  const put = async (call: Call<unknown>, r: PutRequest): Promise<number> => {
    checkName(r.name);
    const command = putCommand(r, ctx.clock.now());
    const value = r.value;
    // Refused here when it surely would be where it applies (a quota), or over this manager's rate: no log entry spent.
    const caller = authenticateClient(ctx, call);
    const exempt = ctx.state.access.decide(caller.id, 'sudo', QUOTAS_PATH).allowed;
    const overQuota = exempt ? null : store.putQuotaProblem(caller.id, command);
    if (overQuota !== null) throw refuse('QUOTA_EXCEEDED', overQuota.reason, overQuota.metadata);
    const overRate = ctx.rateLimit.write(caller.id, value.byteLength);
    if (overRate !== null) {
      ctx.metrics.refused('rate-limited');
      throw refuse('RATE_LIMITED', overRate.message, { retryAfterMs: String(overRate.retryAfterMs) });
    }
    return write(call, command);
  };

  return {
    put: unary(
      ctx,
      'Secrets.Put',
      async (
        call: Call<{
          name: string;
          value: Buffer;
          cas: Cas;
          ttlSeconds: number;
          expireAtMs: number;
          versionsKept: number;
        }>,
      ) => {
        const r = call.request;
        checkName(r.name);
        authorize(ctx, call, 'write', r.name);
        return { version: await put(call, r) };
      },
    ),
    putBatch: unary(ctx, 'Secrets.PutBatch', async (call: Call<{ items: PutRequest[] }>) => {
      const items = call.request.items;
      const count = items.length;
      if (count === 0) throw invalid('a batch needs at least one item', { field: 'items' });
      if (count > PUT_BATCH_ITEMS_MAX)
        throw refuse(
          'BATCH_TOO_LARGE',
          `a batch has ${count} items; at most ${PUT_BATCH_ITEMS_MAX} (PUT_BATCH_ITEMS_MAX): send the rest in another batch`,
          { limit: String(PUT_BATCH_ITEMS_MAX), items: String(count) },
        );
      // Names first, every one: an invalid name is never authorized, audited or logged. Then every
      // name is audited (one record each, with the batch's outcome), as single puts would be.
      for (const [k, item] of items.entries()) forItem(k, count, null, () => checkName(item.name));
      noteTargets(
        call,
        items.map((item) => item.name),
      );
      for (const [k, item] of items.entries())
        forItem(k, count, item.name, () => authorize(ctx, call, 'write', item.name));
      const nowMs = ctx.clock.now();
      const commands = items.map((item, k) => forItem(k, count, item.name, () => putCommand(item, nowMs)));
      const bytes = items.reduce((sum, item) => sum + putBatchItemBytes(item.name, item.value), 0);
      if (bytes > PUT_BATCH_BYTES_MAX)
        throw refuse(
          'BATCH_TOO_LARGE',
          `a batch has ${formatBytes(bytes)} of names and values; at most ${formatBytes(PUT_BATCH_BYTES_MAX)} (PUT_BATCH_BYTES_MAX, one Raft entry): send fewer items`,
          { limit: String(PUT_BATCH_BYTES_MAX), bytes: String(bytes) },
        );
      // On this manager's state, refused early what would surely be refused where the batch applies
      // (a delete right a put needs, a quota, each item alone); the verdict that counts is the apply's.
      const caller = authenticateClient(ctx, call);
      const exempt = ctx.state.access.decide(caller.id, 'sudo', QUOTAS_PATH).allowed;
      for (const [k, command] of commands.entries())
        forItem(k, count, command.name, () => {
          const check = store.putEdgeCheck(exempt ? null : caller.id, command);
          if (check.capabilities.includes('delete')) authorize(ctx, call, 'delete', command.name);
          if (check.quota !== null) throw refuse('QUOTA_EXCEEDED', check.quota.reason, check.quota.metadata);
        });
      const valueBytes = items.reduce((sum, item) => sum + item.value.byteLength, 0);
      const overRate = ctx.rateLimit.write(caller.id, valueBytes);
      if (overRate !== null) {
        ctx.metrics.refused('rate-limited');
        throw refuse('RATE_LIMITED', overRate.message, { retryAfterMs: String(overRate.retryAfterMs) });
      }
      const batch: SecretCommand = {
        op: 'put-batch',
        items: commands.map(({ name, value, cas, expireAtMs, versionsKept }) => ({
          name,
          value,
          cas,
          expireAtMs,
          versionsKept,
        })),
        nowMs,
      };
      const result = await ctx.propose(encodeSecretCommand(batch, { name: caller.id, key: caller.spki }));
      const versions = 'versions' in result ? result.versions : undefined;
      if (versions === undefined || versions.length !== count)
        throw refuse('INTERNAL', `a batch of ${count} puts was answered with ${versions?.length ?? 'no'} versions`);
      return { versions };
    }),
    generate: unary(
      ctx,
      'Secrets.Generate',
      async (call: Call<{ name: string; length: number; charset: string; cas: Cas; ttlSeconds: number }>) => {
        const r = call.request;
        checkName(r.name);
        authorize(ctx, call, 'write', r.name);
        const charset = (r.charset === '' ? 'alphanumeric' : r.charset) as Charset;
        // An own property: "constructor" or "__proto__" are in every object, not charsets.
        if (!Object.hasOwn(CHARSETS, charset))
          throw invalid(`charset is one of ${Object.keys(CHARSETS).join(', ')}`, { field: 'charset' });
        if (r.length < 1 || r.length > GENERATE_LENGTH_MAX)
          throw invalid(`length is between 1 and ${GENERATE_LENGTH_MAX}`, {
            field: 'length',
            limit: String(GENERATE_LENGTH_MAX),
          });
        const value = generateValue(r.length, charset);
        try {
          return {
            version: await put(call, {
              name: r.name,
              value,
              cas: r.cas,
              ttlSeconds: r.ttlSeconds,
              expireAtMs: 0,
              versionsKept: 0,
            }),
          };
        } finally {
          value.fill(0);
        }
      },
    ),
    get: unary(
      ctx,
      'Secrets.Get',
      async (call: Call<{ name: string; version: number; label: string; stale: boolean }>) => {
        const r = call.request;
        checkName(r.name);
        authorize(ctx, call, 'read', r.name);
        if (r.version !== 0 && r.label !== '') throw invalid('give a version or a label, not both', { field: 'label' });
        if (r.label !== '' && labelProblem(r.label) !== null) throw invalid(labelProblem(r.label)!, { field: 'label' });
        // A static database role's password is read at the read point always, never while its
        // rotation is under way (the database may already have the next one).
        const staticPassword = STATIC_SECRET_NAME_PATTERN.test(r.name);
        const applied = await readPoint(r.stale && !staticPassword);
        if (staticPassword) await awaitStaticRotation(ctx, r.name);
        // Checked again at the read point: a revocation committed before the read is honoured here too.
        authorize(ctx, call, 'read', r.name);
        const found = store.read(
          r.name,
          r.version !== 0 ? { version: r.version } : r.label !== '' ? { label: r.label } : {},
          ctx.clock.now(),
        );
        // Opened for this reply only, and zeroed once the reply is serialized.
        return {
          value: found.value,
          version: found.version,
          appliedIndex: Math.max(applied, ctx.replica.status().raft?.applied ?? 0),
          [WIPE_AFTER_REPLY]: [found.value],
        };
      },
    ),
    list: unary(
      ctx,
      'Secrets.List',
      async (
        call: Call<{ prefix: string; pageSize: number; pageToken: string; includeDeleted: boolean; stale: boolean }>,
      ) => {
        const r = call.request;
        authenticateClient(ctx, call);
        if (Buffer.byteLength(r.prefix) > SECRET_NAME_BYTES_MAX)
          throw invalid(`a prefix has at most ${SECRET_NAME_BYTES_MAX} bytes`, {
            field: 'prefix',
            limit: String(SECRET_NAME_BYTES_MAX),
          });
        if (Buffer.byteLength(r.pageToken) > SECRET_NAME_BYTES_MAX)
          throw invalid('page_token is the next_page_token of an earlier answer', { field: 'page_token' });
        if (r.pageSize > LIST_PAGE_SIZE_MAX)
          throw invalid(`page_size is at most ${LIST_PAGE_SIZE_MAX}`, {
            field: 'page_size',
            limit: String(LIST_PAGE_SIZE_MAX),
          });
        const applied = await readPoint(r.stale);
        const identity = authenticateClient(ctx, call);
        // Names the caller may not list are left out, not refused: a listing shows what one may see.
        const visible = (name: string): boolean => ctx.state.access.decide(identity.id, 'list', name).allowed;
        const page = await store.list(
          r.prefix,
          r.pageToken,
          r.pageSize === 0 ? 100 : r.pageSize,
          r.includeDeleted,
          visible,
        );
        return { secrets: page.secrets.map(metadataReply), nextPageToken: page.next, appliedIndex: applied };
      },
    ),
    versions: unary(ctx, 'Secrets.Versions', async (call: Call<{ name: string; stale: boolean }>) => {
      checkName(call.request.name);
      authorize(ctx, call, 'read', call.request.name);
      const applied = await readPoint(call.request.stale);
      authorize(ctx, call, 'read', call.request.name);
      const nowMs = ctx.clock.now();
      return {
        secret: metadataReply(store.metadata(call.request.name)),
        versions: store.versions(call.request.name, nowMs).map((v) => ({ ...v, expireAtMs: v.expireAtMs ?? 0 })),
        appliedIndex: applied,
      };
    }),
    delete: unary(ctx, 'Secrets.Delete', async (call: Call<{ name: string }>) => {
      checkName(call.request.name);
      authorize(ctx, call, 'delete', call.request.name);
      return { version: await write(call, { op: 'delete', name: call.request.name }) };
    }),
    undelete: unary(ctx, 'Secrets.Undelete', async (call: Call<{ name: string }>) => {
      checkName(call.request.name);
      authorize(ctx, call, 'delete', call.request.name);
      return { version: await write(call, { op: 'undelete', name: call.request.name }) };
    }),
    destroy: unary(ctx, 'Secrets.Destroy', async (call: Call<{ name: string; versions: number[] }>) => {
      checkName(call.request.name);
      authorize(ctx, call, 'delete', call.request.name);
      if (call.request.versions.length === 0) throw invalid('name the versions to destroy', { field: 'versions' });
      return {
        version: await write(call, { op: 'destroy', name: call.request.name, versions: call.request.versions }),
      };
    }),
    label: unary(ctx, 'Secrets.Label', async (call: Call<{ name: string; label: string; version: number }>) => {
      const r = call.request;
      checkName(r.name);
      if (labelProblem(r.label) !== null) throw invalid(labelProblem(r.label)!, { field: 'label' });
      authorize(ctx, call, 'write', r.name);
      if (r.version === 0) throw invalid('name the version the label points at', { field: 'version' });
      return { version: await write(call, { op: 'label', name: r.name, label: r.label, version: r.version }) };
    }),
    unlabel: unary(ctx, 'Secrets.Unlabel', async (call: Call<{ name: string; label: string }>) => {
      const r = call.request;
      checkName(r.name);
      if (labelProblem(r.label) !== null) throw invalid(labelProblem(r.label)!, { field: 'label' });
      authorize(ctx, call, 'write', r.name);
      return { version: await write(call, { op: 'unlabel', name: r.name, label: r.label }) };
    }),
  };
}
