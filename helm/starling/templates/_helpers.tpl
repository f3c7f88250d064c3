{{/* The chart's name, or nameOverride. */}}
{{- define "starling.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name; pods are <fullname>-0, -1, ... */}}
{{- define "starling.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service: the nodes' DNS names, for the peers. */}}
{{- define "starling.headless" -}}
{{- printf "%s-headless" (include "starling.fullname" .) }}
{{- end }}

{{- define "starling.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "starling.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starling.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "starling.labels" -}}
helm.sh/chart: {{ include "starling.chart" . }}
{{ include "starling.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: broker
{{- end }}

{{- define "starling.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "starling.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "starling.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The initial members, "1=<pod-0 DNS>:7946,2=...": node N is the pod of ordinal
N-1 under the headless Service. Nodes past them join through node 1.
*/}}
{{- define "starling.peers" -}}
{{- $fullname := include "starling.fullname" . }}
{{- $headless := include "starling.headless" . }}
{{- $peers := list }}
{{- range $i := until (int .Values.cluster.initialMembers) }}
{{- $peers = append $peers (printf "%d=%s-%d.%s.%s.svc.%s:%d" (add $i 1) $fullname $i $headless $.Release.Namespace $.Values.clusterDomain (int $.Values.cluster.port)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/* Seconds Kubernetes gives a pod to stop: the drain must fit inside. */}}
{{- define "starling.terminationGrace" -}}
{{- $floor := add (int .Values.mqtt.drainTimeout) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 15 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above mqtt.drainTimeout + preStopSleepSeconds (%d), or a drain is cut short" (int .Values.terminationGracePeriodSeconds) (int $floor)) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* One TOML table of the config file: scalars and lists (toJson is valid TOML for them). */}}
{{- define "starling.tomlTable" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- end }}
