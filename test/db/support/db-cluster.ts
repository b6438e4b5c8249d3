import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CofferClient } from '../../../src/client/client.ts';
import type { NodeOptions } from '../../../src/server/node.ts';
import { InProcessCluster } from '../../server/in-process-cluster.ts';
import { TestPostgres } from './postgres.ts';

/** A role's creation SQL as the dynamic credentials tests write it: a user that may read the `orders` table. */
export const CREATE_SQL = `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`;

/**
 * The set-up of the dynamic credentials tests: a real PostgreSQL with a table `orders` holding
 * (1, 'tea'), three in-process managers, and the database configured in them as `main`.
 */
export class DbCluster {
  private constructor(
    readonly pg: TestPostgres,
    readonly cluster: InProcessCluster,
    readonly admin: CofferClient,
    readonly pgDir: string,
  ) {}

  /** `options` go to every manager (a logger, say). */
  static async start(options: Partial<NodeOptions> = {}): Promise<DbCluster> {
    // A directory of its own: as root the harness hands it to the postgres user.
    const pgDir = mkdtempSync(join(tmpdir(), 'coffer-pg-'));
    let pg: TestPostgres | null = null;
    let cluster: InProcessCluster | null = null;
    try {
      pg = await TestPostgres.start(pgDir);
      await pg.query('CREATE TABLE orders (id int PRIMARY KEY, item text)');
      await pg.query("INSERT INTO orders VALUES (1, 'tea')");
      cluster = await InProcessCluster.start(3, options);
      await cluster.servesReads(0);
      const admin = cluster.adminClient();
      await admin.configureDatabase('main', pg.adminUrl);
      return new DbCluster(pg, cluster, admin, pgDir);
    } catch (error) {
      await cluster?.stop();
      await pg?.stop();
      rmSync(pgDir, { recursive: true, force: true });
      throw error;
    }
  }

  /** A role of `main` with CREATE_SQL. */
  async putRole(role: string, defaultTtlSeconds: number, maxTtlSeconds: number): Promise<void> {
    await this.admin.putDatabaseRole({ db: 'main', role, creationSql: CREATE_SQL, defaultTtlSeconds, maxTtlSeconds });
  }

  /** The variables `coffer` finds the admin identity with. */
  adminEnv(): Record<string, string> {
    return {
      COFFER_ADDR: this.cluster.addresses.join(','),
      COFFER_CA: join(this.cluster.adminDir, 'ca.crt'),
      COFFER_CERT: join(this.cluster.adminDir, 'admin.crt'),
      COFFER_KEY: join(this.cluster.adminDir, 'admin.key'),
    };
  }

  /** What `user` reads from `orders` (row 1): 'tea'. Rejects when the login is refused. */
  async selects(user: string, password: string): Promise<string> {
    const client = await this.pg.connect(user, password);
    try {
      const rows = await client.query<{ item: string }>('SELECT item FROM orders WHERE id = 1');
      return rows.rows[0]!.item;
    } finally {
      await client.end();
    }
  }

  async stop(): Promise<void> {
    this.admin.close();
    await this.cluster.stop();
    await this.pg.stop();
    rmSync(this.pgDir, { recursive: true, force: true });
  }
}
