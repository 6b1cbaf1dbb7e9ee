{{- /*
Names, labels and references shared by every template. One release per cluster: the
PriorityClasses, the webhook configurations and the DNS names that certificates and the
scheduler configuration carry are cluster-wide and fixed, so object names do not depend on
the release name (docs/deployment.md, "Names").
*/ -}}

{{- /* The name of one part's objects: gpushare-<component>. Argument: the component. */ -}}
{{- define "gpushare.componentName" -}}
gpushare-{{ . }}
{{- end -}}

{{- /* Labels a pod selector uses. Argument: (dict "root" $ "component" "webhook"). */ -}}
{{- define "gpushare.selectorLabels" -}}
app.kubernetes.io/name: gpushare
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- /* Labels of every object. Argument: (dict "root" $ "component" "webhook"). */ -}}
{{- define "gpushare.labels" -}}
{{ include "gpushare.selectorLabels" . }}
app.kubernetes.io/part-of: gpushare
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- /* The one image every part runs: repository:tag, the tag defaulting to appVersion. */ -}}
{{- define "gpushare.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* The injected sidecar's image: sidecar.image.*, else the chart's image. */ -}}
{{- define "gpushare.sidecarImage" -}}
{{ .Values.sidecar.image.repository | default .Values.image.repository }}:{{ .Values.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* imagePullSecrets of the chart's own pods (not of the injected sidecar). */ -}}
{{- define "gpushare.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /* The timekeeper's in-cluster URL, unless webhook.timekeeperUrl names another. */ -}}
{{- define "gpushare.timekeeperUrl" -}}
{{- .Values.webhook.timekeeperUrl | default (printf "http://%s.%s.svc:%v" (include "gpushare.componentName" "timekeeper") .Release.Namespace .Values.timekeeper.service.port) -}}
{{- end -}}

{{- /* DNS names of the webhook Service; the same four `gpushare certs generate` writes by
default when the namespace is gpushare-system. Output: a JSON list. */ -}}
{{- define "gpushare.webhook.dnsNames" -}}
{{- $service := include "gpushare.componentName" "webhook" -}}
{{- $ns := .Release.Namespace -}}
{{- list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) | toJson -}}
{{- end -}}

{{- /* Namespaces the webhook never touches: webhook.systemNamespaces plus the release's
own. Output: a JSON list. */ -}}
{{- define "gpushare.webhook.systemNamespaces" -}}
{{- concat .Values.webhook.systemNamespaces (list .Release.Namespace) | uniq | toJson -}}
{{- end -}}

{{- /* namespaceSelector of both webhook configurations. Argument: the root context. */ -}}
{{- define "gpushare.webhook.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ include "gpushare.webhook.systemNamespaces" . }}
  - key: gpushare.io/admission
    operator: NotIn
    values: ["disabled"]
{{- end -}}

{{- /* matchConditions: only pods asking for a GPU resource reach the webhook (K8s >= 1.28). */ -}}
{{- define "gpushare.webhook.matchConditions" -}}
- name: asks-for-gpu
  expression: >-
    [has(object.spec.containers) ? object.spec.containers : [],
     has(object.spec.initContainers) ? object.spec.initContainers : []].exists(group,
      group.exists(c, has(c.resources) && (
        (has(c.resources.limits) && ['tencent.com/vcuda-core', 'tencent.com/vcuda-memory'].exists(r, r in c.resources.limits)) ||
        (has(c.resources.requests) && ['tencent.com/vcuda-core', 'tencent.com/vcuda-memory'].exists(r, r in c.resources.requests)))))
{{- end -}}

{{- /* matchConditions that send an UPDATE only when it changes what /validate checks on an
existing pod: the accounting sidecar's image (the one container field a pod update can
change) or a GPU annotation. (K8s >= 1.28) */ -}}
{{- define "gpushare.webhook.updateMatchConditions" -}}
- name: changes-what-gpushare-checks
  expression: >-
    ['tencent.com/vcuda-core-limit', 'gpushare.io/quota-request', 'gpushare.io/quota-limit', 'gpushare.io/sm-partition'].exists(k,
      (has(object.metadata.annotations) && k in object.metadata.annotations) != (has(oldObject.metadata.annotations) && k in oldObject.metadata.annotations) ||
      (has(object.metadata.annotations) && k in object.metadata.annotations && object.metadata.annotations[k] != oldObject.metadata.annotations[k])) ||
    [has(object.spec.initContainers) ? object.spec.initContainers : [], object.spec.containers].map(group,
      group.filter(c, c.name == 'gpushare-sidecar').map(c, has(c.image) ? c.image : '')) !=
    [has(oldObject.spec.initContainers) ? oldObject.spec.initContainers : [], oldObject.spec.containers].map(group,
      group.filter(c, c.name == 'gpushare-sidecar').map(c, has(c.image) ? c.image : ''))
{{- end -}}

{{- /* The timekeeper's database URL as GPUSHARE_DATABASE_URL (env list entry). */ -}}
{{- define "gpushare.timekeeper.databaseEnv" -}}
{{- $db := .Values.timekeeper.database -}}
- name: GPUSHARE_DATABASE_URL
  {{- if $db.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: url
  {{- else if $db.url }}
  value: {{ $db.url | quote }}
  {{- else }}
  value: {{ printf "sqlite:///%s" $db.sqlite.path | quote }}
  {{- end }}
{{- end -}}

{{- /* True (non-empty) when the timekeeper keeps its ledger in the SQLite file. */ -}}
{{- define "gpushare.timekeeper.sqlite" -}}
{{- if and (not .Values.timekeeper.database.url) (not .Values.timekeeper.database.existingSecret) -}}
true
{{- end -}}
{{- end -}}
