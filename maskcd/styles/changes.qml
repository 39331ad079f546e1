<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- maskcd change polygons: semi-transparent fill graduated by prob_mean (mean change probability, 0-1). -->
<qgis version="3.22.16-Białowieża" styleCategories="Symbology|Labeling|Fields|Rendering">
  <renderer-v2 type="graduatedSymbol" attr="prob_mean" graduatedMethod="GraduatedColor" symbollevels="0" forceraster="0" enableorderby="0" referencescale="-1">
    <ranges>
      <range lower="0.000000" upper="0.500000" symbol="0" label="p &lt; 0.5" render="true"/>
      <range lower="0.500000" upper="0.600000" symbol="1" label="0.5 - 0.6" render="true"/>
      <range lower="0.600000" upper="0.700000" symbol="2" label="0.6 - 0.7" render="true"/>
      <range lower="0.700000" upper="0.800000" symbol="3" label="0.7 - 0.8" render="true"/>
      <range lower="0.800000" upper="0.900000" symbol="4" label="0.8 - 0.9" render="true"/>
      <range lower="0.900000" upper="1.000000" symbol="5" label="0.9 - 1.0" render="true"/>
    </ranges>
    <symbols>
      <symbol type="fill" name="0" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="255,255,178,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
      <symbol type="fill" name="1" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="254,217,118,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
      <symbol type="fill" name="2" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="254,178,76,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
      <symbol type="fill" name="3" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="253,141,60,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
      <symbol type="fill" name="4" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="240,59,32,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
      <symbol type="fill" name="5" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="189,0,38,255"/>
          <prop k="joinstyle" v="miter"/>
          <prop k="outline_color" v="128,0,38,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
    </symbols>
    <source-symbol>
      <symbol type="fill" name="0" alpha="0.6" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="240,59,32,255"/>
          <prop k="outline_color" v="189,0,38,255"/>
          <prop k="outline_width" v="0.26"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>
    </source-symbol>
    <colorramp type="gradient" name="[source]">
      <prop k="color1" v="255,255,178,255"/>
      <prop k="color2" v="189,0,38,255"/>
      <prop k="discrete" v="0"/>
      <prop k="rampType" v="gradient"/>
      <prop k="stops" v="0.25;254,204,92,255:0.5;253,141,60,255:0.75;240,59,32,255"/>
    </colorramp>
    <classificationMethod id="Fixed">
      <symmetricMode enabled="0" symmetrypoint="0" astride="0"/>
      <labelFormat format="%1 - %2" trimtrailingzeroes="1" labelprecision="1"/>
      <parameters>
        <Option/>
      </parameters>
      <extraInformation/>
    </classificationMethod>
    <rotation/>
    <sizescale/>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <previewExpression>"change_id"</previewExpression>
  <layerGeometryType>2</layerGeometryType>
</qgis>
