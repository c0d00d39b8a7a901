import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { parseAllDocuments, parse } from 'yaml';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { parseEnv } from '../../src/config/env.js';
import { loadConfig, parseRoutesFile } from '../../src/config/load.js';
import { TEST_SECRET } from '../helpers/tokens.js';

const DIR = new URL('../../deploy/kubernetes/', import.meta.url);

/** The Kubernetes schemas (from the API's OpenAPI definitions, compiled by kubernetes-models) per kind. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1/ConfigMap': ConfigMap as never,
  'v1/Service': Service as never,
  'apps/v1/Deployment': Deployment as never,
  'apps/v1/StatefulSet': StatefulSet as never,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler as never,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as never,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy as never,
};

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  [key: string]: unknown;
}

const files = readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
const manifests: Array<{ file: string; doc: Manifest }> = files.flatMap((file) =>
  parseAllDocuments(readFileSync(new URL(file, DIR), 'utf8')).map((d) => {
    assert.equal(d.errors.length, 0, `${file}: ${d.errors.map((e) => e.message).join('; ')}`);
    return { file, doc: d.toJS() as Manifest };
  }),
);
// Manifests are read as the loosely typed YAML they are; the schema test above checks their shape.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const find = (kind: string, name: string): Record<string, any> => {
  const hit = manifests.find((m) => m.doc.kind === kind && m.doc.metadata.name === name);
  assert.ok(hit, `no ${kind} ${name} in deploy/kubernetes`);
  return hit.doc;
};

describe('deploy/kubernetes manifests', () => {
  it('each document is valid against the Kubernetes schema of its kind', () => {
    assert.ok(manifests.length >= 9);
    for (const { file, doc } of manifests) {
      const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
      assert.ok(Model, `${file}: ${doc.apiVersion} ${doc.kind} has no schema here; add it to MODELS`);
      assert.doesNotThrow(() => new Model(doc as never).validate(), `${file}: ${doc.kind} ${doc.metadata.name}`);
    }
  });

  it('the schema check catches a wrong type and a missing required field', () => {
    const deployment = structuredClone(find('Deployment', 'api-gateway'));
    deployment.spec.template.spec.containers[0].ports[0].containerPort = '8090';
    assert.throws(() => new Deployment(deployment as never).validate(), /containerPort/);
    const hpa = structuredClone(find('HorizontalPodAutoscaler', 'api-gateway-hpa'));
    delete hpa.spec.scaleTargetRef;
    assert.throws(() => new HorizontalPodAutoscaler(hpa as never).validate(), /scaleTargetRef/);
  });

  it('the kustomization lists every manifest file', () => {
    const kustomization = parse(readFileSync(new URL('kustomization.yaml', DIR), 'utf8')) as { resources: string[] };
    assert.deepEqual([...kustomization.resources].sort(), [...files].sort());
  });

  it("the Deployment follows the spec: 3 replicas, its resources, probes on /health/live and /health/ready, JWT_SECRET from a Secret", () => {
    const d = find('Deployment', 'api-gateway');
    assert.equal(d.spec.replicas, 3);
    const c = d.spec.template.spec.containers[0];
    assert.deepEqual(c.resources, { requests: { memory: '128Mi', cpu: '100m' }, limits: { memory: '256Mi', cpu: '200m' } });
    assert.equal(c.livenessProbe.httpGet.path, '/health/live');
    assert.equal(c.readinessProbe.httpGet.path, '/health/ready');
    assert.equal(c.livenessProbe.initialDelaySeconds, 30);
    assert.equal(c.readinessProbe.periodSeconds, 5);
    const env = Object.fromEntries((c.env as Array<{ name: string; value?: string; valueFrom?: unknown }>).map((e) => [e.name, e]));
    assert.deepEqual(env.JWT_SECRET!.valueFrom, { secretKeyRef: { name: 'api-gateway-secrets', key: 'jwt-secret' } });
    assert.equal(env.JWT_SECRET!.value, undefined, 'a secret is never written into the manifest');
    // The container's variables must pass the gateway's own start-up checks.
    const plain = Object.fromEntries(Object.entries(env).filter(([, e]) => e.value !== undefined).map(([k, e]) => [k, e.value!]));
    const parsed = parseEnv({ ...plain, JWT_SECRET: TEST_SECRET });
    assert.ok(!('errors' in parsed), 'errors' in parsed ? parsed.errors.join('; ') : '');
    assert.equal(env.NODE_ENV!.value, 'production');
    assert.ok(env.REDIS_URL!.value!.includes(find('Service', 'api-gateway-redis').metadata.name));
    assert.ok(env.TLS_CERT_FILE!.value && env.TLS_KEY_FILE!.value, 'production needs TLS (or TLS_TERMINATED_BY_PROXY)');
    // Probes go where the container listens, over TLS.
    assert.equal(c.livenessProbe.httpGet.scheme, 'HTTPS');
    assert.equal(c.ports[0].containerPort, Number(env.PORT!.value));
  });

  it('the Deployment runs hardened: non-root, read-only root, no privilege escalation, capabilities dropped', () => {
    const pod = find('Deployment', 'api-gateway').spec.template.spec;
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.automountServiceAccountToken, false);
    const sc = pod.containers[0].securityContext;
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.deepEqual(sc.capabilities.drop, ['ALL']);
    // Time for the preStop pause plus the gateway's drain before the kubelet kills it.
    const env = Object.fromEntries(pod.containers[0].env.map((e: { name: string; value?: string }) => [e.name, e.value]));
    assert.ok(pod.terminationGracePeriodSeconds * 1000 > Number(env.SHUTDOWN_TIMEOUT_MS) + 5000);
  });

  it("mounts the routes ConfigMap as a folder (updates reach the pod and are reloaded) at ROUTES_FILE's folder", () => {
    const pod = find('Deployment', 'api-gateway').spec.template.spec;
    const c = pod.containers[0];
    const routesFile = c.env.find((e: { name: string }) => e.name === 'ROUTES_FILE').value as string;
    const mount = c.volumeMounts.find((m: { mountPath: string }) => routesFile.startsWith(`${m.mountPath}/`));
    assert.ok(mount, 'ROUTES_FILE lies in a mounted folder');
    assert.equal(mount.subPath, undefined, 'a subPath mount never sees ConfigMap updates');
    const volume = pod.volumes.find((v: { name: string }) => v.name === mount.name);
    assert.equal(volume.configMap.name, 'api-gateway-routes');
  });

  it('the audit spool is on a writable volume, larger than the spool bound', () => {
    const pod = find('Deployment', 'api-gateway').spec.template.spec;
    const c = pod.containers[0];
    const env = Object.fromEntries(c.env.map((e: { name: string; value?: string }) => [e.name, e.value]));
    const mount = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === env.AUDIT_SPOOL_DIR);
    assert.ok(mount, 'AUDIT_SPOOL_DIR is a mounted volume (the root file system is read-only)');
    const volume = pod.volumes.find((v: { name: string }) => v.name === mount.name);
    assert.ok(volume.emptyDir || volume.persistentVolumeClaim);
    if (volume.emptyDir?.sizeLimit) assert.ok(parseInt(volume.emptyDir.sizeLimit, 10) * 1024 > Number(env.AUDIT_SPOOL_MAX_MB));
  });

  it('the routes ConfigMap holds config/routes.yaml as shipped, and it is a valid routes file', () => {
    const cm = find('ConfigMap', 'api-gateway-routes');
    const text = cm.data['routes.yaml'] as string;
    assert.equal(text, readFileSync(new URL('../../config/routes.yaml', import.meta.url), 'utf8'));
    const routes = parseRoutesFile(text, {});
    assert.ok(routes.routes.length > 0);
  });

  it("the HPA is the spec's: 3 to 20 replicas on CPU 70% and memory 80%", () => {
    const hpa = find('HorizontalPodAutoscaler', 'api-gateway-hpa');
    assert.equal(hpa.spec.minReplicas, 3);
    assert.equal(hpa.spec.maxReplicas, 20);
    assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: 'api-gateway' });
    const targets = Object.fromEntries(hpa.spec.metrics.map((m: { resource: { name: string; target: { averageUtilization: number } } }) => [m.resource.name, m.resource.target.averageUtilization]));
    assert.deepEqual(targets, { cpu: 70, memory: 80 });
  });

  it('selectors match: the Service, PDB, HPA target and NetworkPolicy reach the gateway pods', () => {
    const labels = find('Deployment', 'api-gateway').spec.template.metadata.labels as Record<string, string>;
    const matches = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
    assert.ok(matches(find('Service', 'api-gateway').spec.selector));
    assert.ok(matches(find('PodDisruptionBudget', 'api-gateway').spec.selector.matchLabels));
    assert.ok(matches(find('NetworkPolicy', 'api-gateway').spec.podSelector.matchLabels));
    assert.ok(matches(find('NetworkPolicy', 'api-gateway-redis').spec.ingress[0].from[0].podSelector.matchLabels), 'only the gateway may reach Redis');
  });

  it('Redis keeps its data (append-only file on a volume) and never evicts a revocation', () => {
    const redis = find('StatefulSet', 'api-gateway-redis');
    const args = redis.spec.template.spec.containers[0].args as string[];
    assert.equal(args[args.indexOf('--appendonly') + 1], 'yes');
    assert.equal(args[args.indexOf('--maxmemory-policy') + 1], 'noeviction');
    assert.equal(redis.spec.volumeClaimTemplates[0].metadata.name, redis.spec.template.spec.containers[0].volumeMounts[0].name);
  });
});

describe('deploy/redis-sentinel (the gateway on Redis Sentinel, a kustomize overlay)', () => {
  const OVERLAY = new URL('../../deploy/redis-sentinel/', import.meta.url);
  const own = parseAllDocuments(readFileSync(new URL('redis-sentinel.yaml', OVERLAY), 'utf8')).map((d) => d.toJS() as Manifest);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const sentinelSet = own.find((m) => m.kind === 'StatefulSet') as Record<string, any>;

  it('its manifests are valid against the Kubernetes schemas', () => {
    for (const doc of own) {
      const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
      assert.ok(Model, `${doc.kind} has no schema here`);
      assert.doesNotThrow(() => new Model(doc as never).validate(), `${doc.kind} ${doc.metadata.name}`);
    }
  });

  it('three pods, each a Redis server and a sentinel; their start scripts are valid shell', () => {
    assert.equal(sentinelSet.spec.replicas, 3);
    const containers = sentinelSet.spec.template.spec.containers as Array<{ name: string; args: string[]; securityContext: { readOnlyRootFilesystem: boolean } }>;
    assert.deepEqual(containers.map((c) => c.name), ['redis', 'sentinel']);
    for (const c of containers) {
      assert.equal(c.securityContext.readOnlyRootFilesystem, true);
      const check = spawnSync('sh', ['-n', '-c', c.args[0]!], { encoding: 'utf8' });
      assert.equal(check.status, 0, `${c.name}: ${check.stderr}`);
    }
    const redisArgs = containers[0]!.args[0]!;
    assert.match(redisArgs, /--maxmemory-policy noeviction/);
    assert.match(redisArgs, /--appendonly yes/);
  });

  it('the gateway env it patches in passes the gateway\'s own checks: sentinels named by pod, the password from a Secret', async () => {
    const patch = parse(readFileSync(new URL('gateway-env.yaml', OVERLAY), 'utf8')) as { spec: { template: { spec: { containers: Array<{ env: Array<{ name: string; value?: string; valueFrom?: unknown }> }> } } } };
    const env = patch.spec.template.spec.containers[0]!.env;
    const plain = Object.fromEntries(env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
    const sentinels = plain.REDIS_SENTINELS!.split(',');
    assert.deepEqual(sentinels, [0, 1, 2].map((i) => `${sentinelSet.metadata.name}-${i}.${sentinelSet.spec.serviceName}:26379`));
    assert.ok(env.find((e) => e.name === 'REDIS_PASSWORD')!.valueFrom, 'the password comes from a Secret');
    const config = await loadConfig({ ...plain, JWT_SECRET: TEST_SECRET, ROUTES_FILE: 'config/routes.yaml' });
    assert.equal(config.env.REDIS_SENTINEL_NAME, 'gateway');
    assert.match(sentinelSet.spec.template.spec.containers[1].args[0], /sentinel monitor gateway /);
  });

  it('kustomize builds it: the single Redis gone, REDIS_URL replaced, the sentinel port open', (t) => {
    const built = spawnSync('kubectl', ['kustomize', OVERLAY.pathname], { encoding: 'utf8' });
    if (built.error !== undefined) return t.skip('kubectl is not installed');
    assert.equal(built.status, 0, built.stderr);
    const docs = parseAllDocuments(built.stdout).map((d) => d.toJS() as Manifest);
    assert.ok(!docs.some((d) => d.metadata.name === 'api-gateway-redis' && (d.kind === 'StatefulSet' || d.kind === 'Service')));
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const gateway = docs.find((d) => d.kind === 'Deployment') as Record<string, any>;
    const names = (gateway.spec.template.spec.containers[0].env as Array<{ name: string }>).map((e) => e.name);
    assert.ok(!names.includes('REDIS_URL') && names.includes('REDIS_SENTINELS'));
    assert.match(JSON.stringify(docs.find((d) => d.kind === 'NetworkPolicy' && d.metadata.name === 'api-gateway')), /26379/);
  });
});

describe('deploy/Dockerfile', () => {
  const dockerfile = readFileSync(new URL('../../deploy/Dockerfile', import.meta.url), 'utf8');
  const lines = dockerfile.split('\n').filter((l) => l.trim() !== '' && !l.trim().startsWith('#'));

  it('is multi-stage, production dependencies only, non-root, with a HEALTHCHECK and the built entry point', () => {
    assert.equal(lines.filter((l) => l.startsWith('FROM ')).length, 2);
    assert.ok(lines.some((l) => l.includes('npm prune --omit=dev')));
    const finalStage = lines.slice(lines.findLastIndex((l) => l.startsWith('FROM ')));
    assert.ok(finalStage.some((l) => /^USER (node|\d+)/.test(l)), 'the final stage drops root');
    assert.ok(finalStage.some((l) => l.startsWith('HEALTHCHECK ') && l.includes('dist/src/healthcheck.js')));
    assert.ok(finalStage.some((l) => l.startsWith('CMD ') && l.includes('dist/src/main.js')));
    assert.ok(!finalStage.some((l) => /npm (ci|install)(?!.*--omit=dev)/.test(l)), 'no dev dependencies in the final stage');
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { main: string };
    assert.equal(pkg.main, 'dist/src/main.js');
  });

  it('runs node with the same flags as the Kubernetes deployment (what the benchmark measures)', () => {
    const env = find('Deployment', 'api-gateway').spec.template.spec.containers[0].env as Array<{ name: string; value?: string }>;
    const manifest = env.find((e) => e.name === 'NODE_OPTIONS')?.value;
    assert.match(manifest ?? '', /--max-semi-space-size=\d+/);
    assert.ok(dockerfile.includes(`NODE_OPTIONS="${manifest}"`), `the Dockerfile sets NODE_OPTIONS="${manifest}"`);
  });
});
