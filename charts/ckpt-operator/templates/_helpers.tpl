{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "ckpt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name. */}}
{{- define "ckpt-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ckpt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ckpt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ckpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ckpt-operator.labels" -}}
helm.sh/chart: {{ include "ckpt-operator.chart" . }}
{{ include "ckpt-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ckpt-operator
{{- end }}

{{- define "ckpt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ckpt-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ckpt-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* Hot standby (Kopf peering) is on when more than one replica runs. */}}
{{- define "ckpt-operator.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{- define "ckpt-operator.peeringName" -}}
{{- default (include "ckpt-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "ckpt-operator.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Validate the values once; every template that matters includes this. values.schema.json (generated
from ckpt_operator/api/chart_values.py) has checked keys and types already; these are the checks
that deserve a message saying what to do.
*/}}
{{- define "ckpt-operator.validate" -}}
{{- if not .Values.allowedRoots }}
{{- fail "\n\nallowedRoots is required: list the store URI prefixes TrainingRuns may use, e.g.\n  --set 'allowedRoots={file:///data/checkpoints/,s3://my-bucket/checkpoints/}'\nWithout one the operator accepts no run (it fails closed)." }}
{{- end }}
{{- range .Values.allowedRoots }}
{{- if not (regexMatch "^[a-z][a-z0-9+.-]*://." .) }}
{{- fail (printf "allowedRoots: %q is not a URI prefix such as file:///data/checkpoints/ or s3://bucket/prefix/" .) }}
{{- end }}
{{- end }}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "watchNamespaces: %q is not a namespace name (exact names only, no globs: a Role is created in each)" .) }}
{{- end }}
{{- end }}
{{- if .Values.webhook.enabled }}
{{- if gt (int .Values.replicas) 1 }}
{{- fail "webhook.enabled needs replicas: 1 (a hot-standby replica has no indexes and could not answer admission requests the Service sends it)" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ckpt-operator.webhookName" -}}
{{- printf "%s-webhook" (include "ckpt-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What the operator does in a namespace it watches: Kopf's events, our resources, attempt pods,
s3 credentials. Shared by the cluster-wide ClusterRole and the per-namespace Roles.
*/}}
{{- define "ckpt-operator.namespacedRules" -}}
# Kopf posts Events about the objects it handles.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# The product's resources; Kopf keeps its progress in their annotations.
- apiGroups: [ckpt.dev]
  resources: [trainingruns, checkpoints]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [ckpt.dev]
  resources: [trainingruns/status, checkpoints/status]
  verbs: [get, update, patch]
# Owner references with blockOwnerDeletion on attempt pods and checkpoints.
- apiGroups: [ckpt.dev]
  resources: [trainingruns/finalizers, checkpoints/finalizers]
  verbs: [update]
# Attempt pods (created, labelled, deleted) and consumer pods (read for loaded-step).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# S3 credentials named by spec.store.secretRef: read by name, never listed.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}

{{- define "ckpt-operator.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ if include "ckpt-operator.clusterWide" . }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
{{- end }}
