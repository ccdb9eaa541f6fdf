/**
 * Running the OCF agent the way Pacemaker's executor does: the action as the
 * only argument, the parameters as OCF_RESKEY_* variables. `withScores`
 * puts a stand-in crm_attribute first on PATH that records every promotion
 * score the agent publishes, so a test can read them without a cluster.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { clientEnv, run, type RunResult } from '../../interop/proc.js';
import { AGENT_PATH } from './netns-cluster.js';

export interface AgentParams {
  resource?: string;
  config?: string;
  node?: string;
  mirrorbd?: string;
}

export interface Agent {
  run(action: string, extraEnv?: NodeJS.ProcessEnv): Promise<RunResult>;
  /** Promotion score writes so far: "10000", ... or "delete". */
  scores(): Promise<string[]>;
}

export async function makeAgent(dir: string, params: AgentParams): Promise<Agent> {
  const bin = path.join(dir, 'bin');
  const log = path.join(dir, 'scores.log');
  await fsp.mkdir(bin, { recursive: true });
  // Answers like crm_attribute from Pacemaker 2.1: --help-all lists --promotion.
  await fsp.writeFile(
    path.join(bin, 'crm_attribute'),
    [
      '#!/bin/sh',
      'case "$*" in *--help-all*) echo "  -p, --promotion=RESOURCE"; exit 0 ;; esac',
      `case "$*" in *" -D"*) echo delete >>'${log}' ;; *" -v "*) echo "$*" | sed 's/.* -v \\([^ ]*\\).*/\\1/' >>'${log}' ;; esac`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const env: NodeJS.ProcessEnv = {
    ...clientEnv,
    PATH: `${bin}:${clientEnv.PATH ?? '/usr/bin:/bin'}`,
    OCF_ROOT: '/usr/lib/ocf',
    OCF_RESOURCE_INSTANCE: 'mbd',
    OCF_RESKEY_CRM_meta_timeout: '20000',
    // The agent's temp file goes with the test's directory.
    TMPDIR: dir,
  };
  for (const [k, v] of Object.entries(params)) if (v !== undefined) env[`OCF_RESKEY_${k}`] = v;
  return {
    run: (action, extraEnv = {}) => run(AGENT_PATH, [action], { env: { ...env, ...extraEnv }, timeoutMs: 60_000 }),
    scores: async () => (await fsp.readFile(log, 'utf8').catch(() => '')).split('\n').filter((l) => l !== ''),
  };
}

/** OCF exit codes (OCF 1.1). */
export const OCF = {
  SUCCESS: 0,
  ERR_GENERIC: 1,
  ERR_UNIMPLEMENTED: 3,
  ERR_INSTALLED: 5,
  ERR_CONFIGURED: 6,
  NOT_RUNNING: 7,
  RUNNING_PROMOTED: 8,
  FAILED_PROMOTED: 9,
} as const;
