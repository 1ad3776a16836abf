/**
 * docs/kubernetes.md stays a manifest that works: every ```yaml block parses (the `yaml` package),
 * and the Deployment agrees with the image (its command, ports and health check) and with itself
 * (the grace period covers preStop and the drain; the startup probe covers --ready-timeout).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { parseAllDocuments } from 'yaml';
import { DEFAULTS, parseDuration } from '../../supervisor/options.js';
import { listenPorts, parseStartCommand, readDockerfile } from '../helpers/dockerfile.js';
import { REPO_ROOT } from '../helpers/processes.js';

const DOC_PATH = join(REPO_ROOT, 'docs', 'kubernetes.md');

/** A Kubernetes object as plain data; the test reads the fields it checks and fails on any missing one. */
// biome-ignore lint/suspicious/noExplicitAny: manifests are untyped data, checked field by field below
type K8sObject = Record<string, any>;

/** The text of every ```yaml block of a Markdown document. */
function yamlBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)].map((match) => match[1] as string);
}

const blocks = yamlBlocks(readFileSync(DOC_PATH, 'utf8'));
const documents = blocks.flatMap((block) => parseAllDocuments(block));
const objects: K8sObject[] = documents.map((document) => document.toJS() as K8sObject);

/** The one object of `kind` in the document; throws when there is none or more than one. */
function objectOfKind(kind: string): K8sObject {
  const found = objects.filter((object) => object?.kind === kind);
  if (found.length !== 1)
    throw new Error(`Expected one ${kind} in docs/kubernetes.md, found ${found.length}`);
  return found[0] as K8sObject;
}

describe('docs/kubernetes.md', () => {
  test('every yaml block parses without errors or warnings', () => {
    expect(blocks.length).toBeGreaterThan(0);
    const problems = documents.flatMap((document) =>
      [...document.errors, ...document.warnings].map((problem) => problem.message),
    );
    expect(problems).toEqual([]);
    for (const object of objects) {
      expect(object).toEqual(
        expect.objectContaining({
          apiVersion: expect.any(String),
          kind: expect.any(String),
          metadata: expect.objectContaining({ name: expect.any(String) }),
        }),
      );
    }
  });

  describe('the Deployment', () => {
    const deployment = objectOfKind('Deployment');
    const pod = deployment.spec.template.spec;
    const container = pod.containers[0];
    const image = readDockerfile();
    const start = parseStartCommand(container.args.slice(2));

    test('runs the image command through the ENTRYPOINT (args, never command), with the same app and ports', () => {
      expect(container.command).toBeUndefined();
      expect(container.args.slice(0, 2)).toEqual(['baton', 'start']);
      const imageStart = parseStartCommand(image.cmd.slice(2));
      expect(start.command).toEqual(imageStart.command);
      expect(listenPorts(start.listen)).toEqual(listenPorts(imageStart.listen));
      const containerPorts = Object.fromEntries(
        container.ports.map((port: K8sObject) => [port.name, port.containerPort]),
      );
      expect(containerPorts).toEqual(listenPorts(start.listen));
    });

    test('startup, readiness and liveness probes all run baton status --check, as the HEALTHCHECK does', () => {
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        expect({ probe, command: container[probe].exec.command }).toEqual({
          probe,
          command: image.healthcheck,
        });
      }
      expect(image.healthcheck).toEqual(['baton', 'status', '--check']);
    });

    test('the startup probe waits at least --ready-timeout; liveness is more patient than readiness', () => {
      const readyTimeoutMs = start.options['ready-timeout']
        ? parseDuration('--ready-timeout', start.options['ready-timeout'])
        : DEFAULTS.readyTimeoutMs;
      const budgetMs = (probe: K8sObject) => probe.periodSeconds * probe.failureThreshold * 1000;
      expect(budgetMs(container.startupProbe)).toBeGreaterThanOrEqual(readyTimeoutMs);
      expect(budgetMs(container.livenessProbe)).toBeGreaterThan(budgetMs(container.readinessProbe));
    });

    test('terminationGracePeriodSeconds covers the preStop sleep and --drain-timeout, with a margin', () => {
      const preStop = container.lifecycle.preStop.exec.command;
      expect(preStop[0]).toBe('sleep');
      const preStopMs = Number(preStop[1]) * 1000;
      const drainMs = parseDuration('--drain-timeout', start.options['drain-timeout'] ?? '30s');
      expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(preStopMs + drainMs);
    });

    test('a rolling update never takes a pod away before its replacement is ready', () => {
      expect(deployment.spec.strategy.type).toBe('RollingUpdate');
      expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
      expect(deployment.spec.strategy.rollingUpdate.maxSurge).toBeGreaterThanOrEqual(1);
    });

    test("runs as the image's unprivileged user, with the ConfigMap mounted as a directory (so that it updates)", () => {
      expect(pod.securityContext.runAsNonRoot).toBe(true);
      expect(pod.securityContext.runAsUser).toBe(1000);
      const configMap = objectOfKind('ConfigMap');
      const volume = pod.volumes.find(
        (candidate: K8sObject) => candidate.configMap?.name === configMap.metadata.name,
      );
      expect(volume).toBeDefined();
      const mount = container.volumeMounts.find((candidate: K8sObject) => candidate.name === volume.name);
      expect(mount).toEqual(expect.objectContaining({ mountPath: expect.stringMatching(/^\//) }));
      expect(mount.subPath).toBeUndefined();
    });

    test('the Service selects these pods and targets their named ports', () => {
      const service = objectOfKind('Service');
      expect(service.spec.selector).toEqual(deployment.spec.template.metadata.labels);
      expect(deployment.spec.selector.matchLabels).toEqual(deployment.spec.template.metadata.labels);
      const names = container.ports.map((port: K8sObject) => port.name);
      expect(service.spec.ports.map((port: K8sObject) => port.targetPort).sort()).toEqual([...names].sort());
    });
  });
});
