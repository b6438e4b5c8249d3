// How long a login (jwt, static keys) and a credentials request (PostgreSQL) take on three in-process
// managers: node --import tsx scripts/bench/login-latency.ts (needs PostgreSQL, as the tests do).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { CofferClient } from '../../src/client/client.ts';
import { login } from '../../src/client/login.ts';
import { InProcessCluster } from '../../test/server/in-process-cluster.ts';
import { TestPostgres } from '../../test/db/support/postgres.ts';

const cluster = await InProcessCluster.start(3);
const pgDir = mkdtempSync(join(tmpdir(), 'bench-pg-'));
const pg = await TestPostgres.start(pgDir);
try {
  await cluster.servesReads(0);
  const caPem = readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');
  const admin = new CofferClient({
    addresses: cluster.addresses,
    caPem,
    certPem: readFileSync(join(cluster.adminDir, 'admin.crt'), 'utf8'),
    keyPem: readFileSync(join(cluster.adminDir, 'admin.key'), 'utf8'),
  });
  const pair = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k', alg: 'RS256' };
  await admin.configureAuthMethod({
    method: 'jwt',
    staticJwks: JSON.stringify({ keys: [jwk] }),
    boundIssuer: 'https://i',
  });
  await admin.putPolicy('p', [{ path: 'x/**', capabilities: ['read'] }]);
  await admin.putAuthRole({ name: 'ci', method: 'jwt', boundAudiences: ['coffer'], policies: ['p'] });
  const now = () => Math.floor(Date.now() / 1000);
  const times: number[] = [];
  for (let k = 0; k < 60; k++) {
    const jwt = await new SignJWT({ iss: 'https://i', aud: 'coffer', sub: `job-${k}`, exp: now() + 300 })
      .setProtectedHeader({ alg: 'RS256', kid: 'k' })
      .sign(pair.privateKey);
    const t = performance.now();
    await login({ addresses: cluster.addresses, caPem }, { role: 'ci', jwt });
    times.push(performance.now() - t);
  }
  const p = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.floor(q * (xs.length - 1))]!.toFixed(1);
  const warm = times.slice(10);
  console.log(
    `login (key made on the client, CSR, verify, sign, Raft): p50 ${p(warm, 0.5)} ms, p90 ${p(warm, 0.9)} ms over ${warm.length}`,
  );
  await admin.configureDatabase('main', pg.adminUrl);
  await admin.putDatabaseRole({
    db: 'main',
    role: 'r',
    creationSql: `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
  });
  const creds: number[] = [];
  for (let k = 0; k < 40; k++) {
    const t = performance.now();
    await admin.getCredentials('main', 'r');
    creds.push(performance.now() - t);
  }
  const cw = creds.slice(5);
  console.log(
    `creds get (lease open, CREATE ROLE, lease activate): p50 ${p(cw, 0.5)} ms, p90 ${p(cw, 0.9)} ms over ${cw.length}`,
  );
  admin.close();
} finally {
  await cluster.stop();
  await pg.stop();
  rmSync(pgDir, { recursive: true, force: true });
}
